"""Pixels: the artifact fill comes from the artifact's surroundings, never from the artifact itself."""

from __future__ import annotations

import torch

from audit.imaging import fill_from_surroundings, heavy_blur


def test_an_artifact_is_filled_from_its_surroundings_only() -> None:
    x = torch.ones(2, 3, 32, 32)
    region = torch.zeros(2, 32, 32, dtype=torch.bool)
    region[:, :8] = True  # a dark band along the top, like a vignette or a ruler
    x[:, :, :8] = -5.0
    fill = fill_from_surroundings(x, region, factor=8)
    assert torch.allclose(fill[:, :, :8], torch.ones(1)), "the band's own darkness must not leak into its fill"
    assert heavy_blur(x, 8)[:, :, :8].mean() < 0, "a plain blur of the image would keep it dark"
    assert torch.allclose(fill_from_surroundings(x, region, 8, "mean"), torch.ones(1))


def test_a_region_covering_the_image_falls_back_to_the_kept_mean() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    region = torch.ones(1, 4, 4, dtype=torch.bool)
    region[0, 0, 0] = False
    fill = fill_from_surroundings(x, region, factor=4)
    assert torch.isfinite(fill).all()
