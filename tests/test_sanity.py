"""Model parameter randomisation (Adebayo et al. 2018): mechanics and what it detects."""

from __future__ import annotations

import torch

from audit.cam import CAMOutput, GradCAM
from audit.models import build_torchvision
from audit.sanity import cascade_steps, parameter_randomisation, verdict


def test_cascade_runs_from_the_output_back_and_leaves_the_model_untouched() -> None:
    torch.manual_seed(0)
    model = build_torchvision("resnet18", 3).eval()
    steps = cascade_steps(model)
    assert steps[:3] == ["fc", "layer4.1", "layer4.0"] and steps[-2:] == ["bn1", "conv1"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    a = parameter_randomisation(model, lambda m: GradCAM(m, "layer4"), x, seed=1)
    b = parameter_randomisation(model, lambda m: GradCAM(m, "layer4"), x, seed=1)
    assert a.equals(b) and len(a) == len(steps)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_map_that_ignores_the_model_is_caught() -> None:
    class InputEdges:  # an "explanation" that only describes the image
        def __init__(self, model: torch.nn.Module) -> None:
            self.model = model

        def __call__(self, x: torch.Tensor, target: object = None) -> CAMOutput:
            maps = x.abs().sum(dim=1)
            logits = self.model(x)
            return CAMOutput(maps, maps, logits.detach(), logits.argmax(1))

    torch.manual_seed(0)
    model = build_torchvision("resnet18", 3).eval()
    table = parameter_randomisation(model, InputEdges, torch.randn(2, 3, 64, 64))
    assert (table["spearman"] > 0.999).all()
    assert "not evidence about this model" in (verdict(table, 0.5, steps=2) or "")
