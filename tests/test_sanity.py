"""Model parameter randomisation (Adebayo et al. 2018): mechanics and what it detects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from audit.cam import CAMOutput, GradCAM
from audit.models import build_torchvision
from audit.sanity import cascade_steps, judged_similarity, parameter_randomisation, verdict


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


def test_the_check_is_judged_once_the_top_steps_are_all_random_averaged_over_draws() -> None:
    table = pd.DataFrame({"spearman": [0.9, 0.2, 0.95], "randomised": ["a", "a, b", "a, b, c"]})
    assert judged_similarity(table, 2) == 0.2 and verdict(table, 0.5, steps=2) is None
    assert verdict(table, 0.5, steps=1) is not None
    torch.manual_seed(0)
    model = build_torchvision("resnet18", 2).eval()
    x = torch.randn(2, 3, 64, 64)
    one = parameter_randomisation(model, lambda m: GradCAM(m, "layer4"), x, seed=3, draws=1)
    two = parameter_randomisation(model, lambda m: GradCAM(m, "layer4"), x, seed=3, draws=2)
    assert (two["draws"] == 2).all() and not np.allclose(one["spearman"], two["spearman"])


def test_batched_spearman_is_scipys_with_ties_and_constant_maps() -> None:
    from scipy import stats as sps

    from audit.sanity import _ranks, spearman

    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 6, (5, 12, 12), generator=g).double()  # ties everywhere
    b = a + torch.randint(-2, 3, (5, 12, 12), generator=g).double()
    b[4] = 0.0  # a map that randomising made constant: no rank order, rho = 0
    b[3, 0, 0] = float("nan")  # no rank order either
    rho = spearman(_ranks(a), _ranks(b))
    expected = [sps.spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(3)]
    np.testing.assert_allclose(rho[:3], expected, rtol=0, atol=1e-12)
    assert rho[3] == 0.0 and rho[4] == 0.0
