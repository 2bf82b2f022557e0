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
import gzip
import os
import time

import numpy as np
import torch
from torch import nn

ROOT = "/usr/share/datasets/fashion-mnist"


def load(kind):
    x = np.frombuffer(gzip.open(f"{ROOT}/{kind}-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    y = np.frombuffer(gzip.open(f"{ROOT}/{kind}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return x.astype(np.float32), y.astype(np.int64)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


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
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    xtr, ytr = map(torch.from_numpy, load("train"))
    xte, yte = load("t10k")
    model = ResNet18()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    start, steps = time.time(), 0
    while time.time() - start < a.minutes * 60:
        idx = torch.randint(0, len(xtr), (128,))
        loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(xte[i:i + 1000])).argmax(1) for i in range(0, len(xte), 1000)]).numpy()
    print(f"{steps} steps; test accuracy {(pred == yte).mean():.4f}")
    perm = np.random.RandomState(0).permutation(len(xte))
    np.savez(os.path.join(a.out, "resnet18.calib.npz"), image=xte[perm[:4000]])
    np.savez(os.path.join(a.out, "resnet18.eval.npz"), image=xte[perm[4000:6000]])
    torch.onnx.export(model, (torch.from_numpy(xte[:8]),), os.path.join(a.out, "resnet18.onnx"), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)


if __name__ == "__main__":
    main()
