#!/usr/bin/env python3
"""Export torchvision resnet50 (~100 MB) and vit_b_16 (~330 MB) with random weights, opset 17,
for the I/O benchmark. Developer tool: needs Debian's python3-torch and python3-torchvision.

    /usr/bin/python3 bench/make-large-models.py .bench
"""
import os
import sys

import torch
import torchvision

out = sys.argv[1] if len(sys.argv) > 1 else ".bench"
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
for name in ["resnet50", "vit_b_16"]:
    path = os.path.join(out, f"{name}.onnx")
    if os.path.exists(path):
        continue
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(model, (x,), path, opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    print(f"{path}: {os.path.getsize(path) / 1e6:.1f} MB", flush=True)
