#!/usr/bin/env python3
"""A ResNet-18 (torchvision's layout: 7x7 stem, max-pool, 4 stages of 2 basic blocks, 64-512
channels; written out here, one input channel) trained for --minutes on Fashion-MNIST (Debian's
dataset-fashion-mnist), with normalisation inside the graph, exported by the TorchScript exporter
(opset 17, <out>/resnet18.onnx), with calibration (4,000) and evaluation (2,000) slices of the test
split beside it (resnet18.calib.npz, resnet18.eval.npz). For the exit-path check on a CNN that is
not a fixture (docs/profile.md). Developer tool: torch from pip.

    /tmp/venv/bin/python bench/resnet18.py --out /tmp/r18 --minutes 5
    bench/paths.sh 10000 /tmp/r18/resnet18.onnx
"""
import argparse
import os
import sys

import torch
from torch import nn

from fmnist import train

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
from generate import BasicBlock as Block  # noqa: E402  (the fixture CNN's basic block: the same as torchvision's)


class ResNet18(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, image):  # raw 0..255 pixels, as the fixtures take them
        x = self.layers(self.stem((image / 255.0 - 0.286) / 0.353))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=5.0)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = ResNet18()
    xte = train(model, a.out, a.minutes, ("resnet18",))
    torch.onnx.export(model, (torch.from_numpy(xte[:8]),), os.path.join(a.out, "resnet18.onnx"), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)


if __name__ == "__main__":
    main()
