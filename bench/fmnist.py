"""Fashion-MNIST (Debian's dataset-fashion-mnist) for the bench models that are not fixtures
(bench/hf-vit.py, bench/resnet18.py): loading, a fixed-time training run, and the calibration
(4,000) and evaluation (2,000) slices of the test split that bench/paths.sh looks for beside an export."""
import gzip
import os
import time

import numpy as np
import torch

ROOT = "/usr/share/datasets/fashion-mnist"


def load(kind):
    x = np.frombuffer(gzip.open(f"{ROOT}/{kind}-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    y = np.frombuffer(gzip.open(f"{ROOT}/{kind}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return x.astype(np.float32), y.astype(np.int64)


def train(model, out, minutes, names):
    """Train `model` (raw 0..255 pixels in, logits out) for `minutes` with AdamW, print its test
    accuracy, write <out>/<name>.calib.npz and <name>.eval.npz for each name; returns the test images."""
    os.makedirs(out, exist_ok=True)
    xtr, ytr = map(torch.from_numpy, load("train"))
    xte, yte = load("t10k")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    start, steps = time.time(), 0
    while time.time() - start < minutes * 60:
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
    for name in names:
        np.savez(os.path.join(out, f"{name}.calib.npz"), image=xte[perm[:4000]])
        np.savez(os.path.join(out, f"{name}.eval.npz"), image=xte[perm[4000:6000]])
    return xte
