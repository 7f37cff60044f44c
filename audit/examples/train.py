"""Train the demo's small classifier on a generated training split (CPU, about a minute).

Deterministic: fixed seeds, deterministic algorithms, a fixed data order; same machine, same weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from audit.models import build_torchvision

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def load_split(
    manifest: Path, classes: tuple[str, ...], column: str = "image_path"
) -> tuple[torch.Tensor, torch.Tensor]:
    df = pd.read_csv(manifest)
    root = manifest.parent
    x = np.stack([np.asarray(Image.open(root / p).convert("RGB")) for p in df[column]]).astype(np.float32) / 255
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    y = torch.tensor([classes.index(c) for c in df["label"]])
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), y


def train_classifier(
    manifest: Path,
    out: Path,
    classes: tuple[str, ...],
    arch: str = "mobilenet_v3_small",
    epochs: int = 8,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(manifest, out, classes, arch, epochs, batch_size, seed)
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(
    manifest: Path, out: Path, classes: tuple[str, ...], arch: str, epochs: int, batch_size: int, seed: int
) -> nn.Module:
    torch.manual_seed(seed)
    x, y = load_split(manifest, classes)
    model = build_torchvision(arch, len(classes))
    for m in model.modules():  # torchvision's MobileNetV3 uses momentum 0.01: too slow for a short run
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.3f}", flush=True)
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return model
