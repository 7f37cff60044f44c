"""CAM methods: each says only how its map is formed from activation A and gradient G = dS/dA."""

from __future__ import annotations

import torch

from audit.cam.base import CAM


class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al. 2017).

    ``alpha_k = mean_{i,j} dS/dA_k[i,j]``;  ``L = ReLU(sum_k alpha_k A_k)``.
    """

    def layer_map(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        return (weights * activation).sum(dim=1)


METHODS: dict[str, type[CAM]] = {"gradcam": GradCAM}
