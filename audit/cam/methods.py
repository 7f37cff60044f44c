"""CAM methods. Each says only how its map is formed from the target layer's activation ``A``
(B, K, h, w) and the gradient ``G = dS/dA`` of the explained score ``S``; the base class applies ReLU
and upsampling. Notation: ``k`` channel, ``(i, j)`` position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from audit.cam.base import CAM, Context, upsample


class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al. 2017): ``w_k = mean_ij G_k(i,j)``;  ``L = ReLU(sum_k w_k A_k)``."""

    def layer_map(self, activation: torch.Tensor, gradient: torch.Tensor | None, context: Context) -> torch.Tensor:
        assert gradient is not None
        return (gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1)


class HiResCAM(CAM):
    """HiResCAM (Draelos & Carin 2020): ``L = ReLU(sum_k G_k * A_k)``, element-wise, no averaging,
    so the map provably reflects the locations that raise the score for GAP-linear heads."""

    def layer_map(self, activation: torch.Tensor, gradient: torch.Tensor | None, context: Context) -> torch.Tensor:
        assert gradient is not None
        return (gradient * activation).sum(dim=1)


class GradCAMPlusPlus(CAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), with the exponential-score closed form:

    ``alpha_k(i,j) = G^2 / (2 G^2 + sum_ab A_k(a,b) G^3)`` where ``G^2 > 0``, else 0;
    ``w_k = sum_ij alpha_k(i,j) ReLU(G_k(i,j))``;  ``L = ReLU(sum_k w_k A_k)``.

    torchcam 0.5's GradCAMpp divides a boolean-indexed *copy* of alpha, so its alpha stays ``G^2``;
    the test suite pins that difference rather than copying it.
    """

    eps = 1e-8

    def layer_map(self, activation: torch.Tensor, gradient: torch.Tensor | None, context: Context) -> torch.Tensor:
        assert gradient is not None
        g2 = gradient.pow(2)
        g3 = g2 * gradient
        denom = 2 * g2 + (g3 * activation).sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(g2 > 0, g2 / (denom + self.eps), torch.zeros_like(g2))
        weights = (alpha * F.relu(gradient)).sum(dim=(2, 3), keepdim=True)
        return (weights * activation).sum(dim=1)


class LayerCAM(CAM):
    """Layer-CAM (Jiang et al. 2021): ``L = ReLU(sum_k ReLU(G_k) * A_k)``, positive gradients as
    per-location weights; reliable at earlier, finer layers."""

    def layer_map(self, activation: torch.Tensor, gradient: torch.Tensor | None, context: Context) -> torch.Tensor:
        assert gradient is not None
        return (F.relu(gradient) * activation).sum(dim=1)


class ScoreCAM(CAM):
    """Score-CAM (Wang et al. 2020), gradient-free.

    Each channel's map, min-max normalised and upsampled to the input, masks the input:
    ``M_k = up(norm(A_k))``; ``s_k = S(x * M_k) - S(x)`` (logits, as torchcam);
    ``w = softmax_k(s_k)``;  ``L = ReLU(sum_k w_k A_k)``. Costs one forward pass per channel.
    """

    needs_gradient = False
    batch_size = 64

    def layer_map(self, activation: torch.Tensor, gradient: torch.Tensor | None, context: Context) -> torch.Tensor:
        b, k = activation.shape[:2]
        flat = activation.flatten(2)
        lo, hi = flat.amin(dim=2, keepdim=True), flat.amax(dim=2, keepdim=True)
        norm = ((flat - lo) / (hi - lo + 1e-8)).view_as(activation)
        masks = upsample(norm.flatten(0, 1), tuple(context.x.shape[-2:]))  # (B*K, H, W)
        owner = torch.arange(b, device=activation.device).repeat_interleave(k)
        scores = torch.empty(b * k, device=activation.device, dtype=activation.dtype)
        for start in range(0, b * k, self.batch_size):
            sl = slice(start, start + self.batch_size)
            logits = self.model(context.x[owner[sl]] * masks[sl, None])
            scores[sl] = logits.gather(1, context.index[owner[sl], None])[:, 0]
        weights = torch.softmax((scores - context.score[owner]).view(b, k), dim=1)
        return (weights[:, :, None, None] * activation).sum(dim=1)


METHODS: dict[str, type[CAM]] = {
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "gradcam++": GradCAMPlusPlus,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
}
