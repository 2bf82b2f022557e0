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
import gzip
import os
import time

import numpy as np
import torch
from transformers import ViTConfig, ViTForImageClassification

ROOT = "/usr/share/datasets/fashion-mnist"


def load(kind):
    x = np.frombuffer(gzip.open(f"{ROOT}/{kind}-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    y = np.frombuffer(gzip.open(f"{ROOT}/{kind}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return x.astype(np.float32), y.astype(np.int64)


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
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    xtr, ytr = map(torch.from_numpy, load("train"))
    xte, yte = load("t10k")
    model = Classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    start, steps = time.time(), 0
    while time.time() - start < a.minutes * 60:
        idx = torch.randint(0, len(xtr), (128,))
        loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(xte[i:i + 1000])).argmax(1) for i in range(0, len(xte), 1000)]).numpy()
    print(f"{steps} steps; test accuracy {(pred == yte).mean():.4f}")
    perm = np.random.RandomState(0).permutation(len(xte))
    for name in ("hfvit", "hfvit-dy"):  # beside each export, as bench/paths.sh looks for them
        np.savez(os.path.join(a.out, f"{name}.calib.npz"), image=xte[perm[:4000]])
        np.savez(os.path.join(a.out, f"{name}.eval.npz"), image=xte[perm[4000:6000]])
    example = (torch.from_numpy(xte[:8]),)
    torch.onnx.export(model, example, os.path.join(a.out, "hfvit.onnx"), input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    torch.onnx.export(model, example, None, input_names=["image"], output_names=["logits"], dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), opset_version=18, dynamo=True).save(os.path.join(a.out, "hfvit-dy.onnx"))


if __name__ == "__main__":
    main()
