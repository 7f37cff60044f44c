"""Repeated use leaves no hooks and no growing memory behind."""

from __future__ import annotations

import gc
import resource
import sys

import pytest
import torch

from audit.cam import GradCAM, GradCAMPlusPlus
from audit.models import build_torchvision


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_two_hundred_calls_leave_rss_flat_and_no_hooks() -> None:
    torch.manual_seed(0)
    model = build_torchvision("resnet18", 4).eval()
    x = torch.randn(4, 3, 64, 64)
    for cls in (GradCAM, GradCAMPlusPlus):  # warm-up: allocator pools, lazy init
        for _ in range(20):
            cls(model, "layer4")(x)
    gc.collect()
    before = _rss_mb()
    for i in range(200):
        out = (GradCAM if i % 2 else GradCAMPlusPlus)(model, "layer4")(x)
        del out
    gc.collect()
    grown = _rss_mb() - before
    assert grown < 50, f"RSS grew by {grown:.1f} MB over 200 calls"
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
