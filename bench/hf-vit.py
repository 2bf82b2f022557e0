#!/usr/bin/env python3
"""A Hugging Face ViT (ViTForImageClassification: 6 pre-norm layers, width 64, 4 heads, MLP 128,
patch 4, CLS token) trained for --minutes on Fashion-MNIST (Debian's dataset-fashion-mnist), with
normalisation inside the graph, exported by the TorchScript exporter (opset 17, <out>/hfvit.onnx)
and by the dynamo exporter (opset 18, <out>/hfvit-dy.onnx), each with calibration (4,000) and
evaluation (2,000) slices of the test split beside it (<name>.calib.npz, <name>.eval.npz). For the exit-path check on a ViT that is not a
fixture (docs/profile.md). Developer tool: torch >= 2.9 and transformers >= 5 from pip.

    /tmp/venv/bin/python bench/hf-vit.py --out /tmp/hf --minutes 5
    bench/paths.sh 30000 "/tmp/hf/hfvit.onnx /tmp/hf/hfvit-dy.onnx"
"""
import argparse
import os

import torch
from transformers import ViTConfig, ViTForImageClassification

from fmnist import train


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        cfg = ViTConfig(image_size=28, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=6, num_attention_heads=4, intermediate_size=128, num_labels=10)
        self.vit = ViTForImageClassification(cfg)

    def forward(self, image):  # raw 0..255 pixels, as the fixtures take them
        return self.vit(pixel_values=(image / 255.0 - 0.286) / 0.353).logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=5.0)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = Classifier()
    # beside each export, as bench/paths.sh looks for them
    xte = train(model, a.out, a.minutes, ("hfvit", "hfvit-dy"))
    example = (torch.from_numpy(xte[:8]),)
    torch.onnx.export(model, example, os.path.join(a.out, "hfvit.onnx"), input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    torch.onnx.export(model, example, None, input_names=["image"], output_names=["logits"], dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), opset_version=18, dynamo=True).save(os.path.join(a.out, "hfvit-dy.onnx"))


if __name__ == "__main__":
    main()
