"""Pixels: the artifact fill comes from the artifact's surroundings, never from the artifact itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from audit.imaging import dilate, fill_from_surroundings, heavy_blur


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


def test_separable_dilation_equals_the_square_max_pool() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 37, 53, generator=g) > 0.97  # sparse points, odd sizes, regions at the border
    masks[0] = False
    masks[1, 0, 0] = masks[1, -1, -1] = True
    for radius in (0, 1, 2, 7, 40):
        k = 2 * radius + 1
        square = F.max_pool2d(masks.float()[:, None], k, stride=1, padding=radius)[:, 0] > 0
        assert torch.equal(dilate(masks, radius), square), radius
