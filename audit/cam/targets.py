"""Targets: callables that turn a batch of model outputs into the scalar score to explain.

Why callables (as in pytorch-grad-cam): "which score" is the audit's main modelling choice
(predicted class, true label, a fixed class, a finding of a multi-label model); keeping it a
small object lets the engine stay ignorant of labels and manifests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


class Target:
    """Maps logits ``(B, C)`` to the explained class index per image ``(B,)``."""

    def indices(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (score per image, class index per image); the score is the pre-softmax logit."""
        idx = self.indices(logits).to(logits.device)
        return logits.gather(1, idx[:, None]).squeeze(1), idx


@dataclass(frozen=True)
class PredictedClass(Target):
    """Explain the class the model predicts (argmax): the default for focus audits."""

    def indices(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)


@dataclass(frozen=True)
class ClassIndex(Target):
    """Explain one fixed class for every image, or one given class per image."""

    index: int | Sequence[int]

    def indices(self, logits: torch.Tensor) -> torch.Tensor:
        if isinstance(self.index, int):
            return torch.full((logits.shape[0],), self.index, dtype=torch.long)
        idx = torch.as_tensor(list(self.index), dtype=torch.long)
        if idx.shape[0] != logits.shape[0]:
            raise ValueError(f"{idx.shape[0]} target indices for a batch of {logits.shape[0]}")
        return idx
