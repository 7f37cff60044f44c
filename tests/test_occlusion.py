"""Map-guided local occlusion against a matched control: the mask-only evidence of reliance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audit.config import AuditConfig, Occlusion, parse_config
from audit.counterfactual import control_cells, guided_cells, neutralised, occluded, occlusion_masks


def test_guided_cells_take_the_most_mass_until_the_share_is_covered() -> None:
    mass = np.array([0.0, 5.0, 1.0, 3.0, 1.0])
    area = np.ones(5)
    assert guided_cells(mass, area, 0.5, 1.0).tolist() == [False, True, False, False, False]
    assert guided_cells(mass, area, 0.8, 1.0).tolist() == [False, True, False, True, False]
    # never past the area cap, but always the first cell
    assert guided_cells(mass, area, 1.0, 0.4).tolist() == [False, True, False, True, False]
    assert guided_cells(mass, area, 1.0, 0.01).tolist() == [False, True, False, False, False]
    # no mass outside the region: nothing to remove
    assert not guided_cells(np.zeros(5), area, 0.5, 1.0).any()


def test_controls_are_other_outside_cells_of_the_same_area_and_seeded() -> None:
    area = np.array([4.0, 4.0, 0.0, 4.0, 2.0, 4.0, 4.0, 4.0])
    guided = np.zeros(8, bool)
    guided[[0, 1]] = True
    picks = [control_cells(area, guided, np.random.default_rng([0, row])) for row in range(20)]
    for p in picks:
        assert not (p & guided).any() and not p[2]  # elsewhere, and only where there is outside
        assert abs(area[p].sum() - 8.0) <= 2.0
    again = [control_cells(area, guided, np.random.default_rng([0, row])) for row in range(20)]
    assert all((a == b).all() for a, b in zip(picks, again, strict=True))
    assert len({tuple(np.flatnonzero(p)) for p in picks}) > 1  # random, not one fixed set


def _scene(b: int = 2, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    region = torch.zeros(b, size, size, dtype=torch.bool)
    region[:, 20:44, 20:44] = True
    maps = torch.zeros(b, size, size)
    maps[region] = 1.0
    return maps, region


def test_occlusion_follows_the_map_and_never_touches_the_region() -> None:
    maps, region = _scene()
    maps[0, 0:8, 56:64] = 4.0  # image 0's map also points at a corner patch
    maps[0, 17:20, 20:44] = 2.0  # and bleeds just past the region's edge, inside the margin
    o = Occlusion(margin=0.05, grow=0)
    guided, controls, cells = occlusion_masks(o, maps, region, (8, 8), [0, 1])
    assert cells.shape == (2, 8, 8) and cells[0, 0, 7] and cells.sum() == 1
    assert guided[0, 0:8, 56:64].all()
    assert guided[0].sum() == 64
    margin = torch.zeros_like(region[0])
    margin[17:47, 17:47] = True
    for m in (guided, *controls):
        assert not (m & region).any() and not (m[0] & margin).any()
    assert all(abs(int(c[0].sum()) - 64) < 64 for c in controls)  # the same area, to within a cell
    assert not (controls[0][0] & guided[0]).any()
    assert guided[1].sum() == 0 and all(c[1].sum() == 0 for c in controls)  # a map all inside: nothing
    # grown by a cell: the neighbours come too (a deep cell answers to what lies around it)
    grown, _, _ = occlusion_masks(Occlusion(margin=0.05, grow=1), maps, region, (8, 8), [0, 1])
    assert grown[0, 0:16, 48:64].all() and int(grown[0, 16:, :].sum()) == 0
    assert not (grown & region).any() and grown[1].sum() == 0


def test_growth_keeps_the_core_and_stays_under_the_area_cap() -> None:
    from audit.counterfactual import grown_cells

    core = np.zeros(16, bool)
    core[5] = True  # cell (1, 1) of a 4x4 grid
    mass = np.arange(16, dtype=float)
    area = np.ones(16)
    area[0] = 0  # no outside there
    full = grown_cells(core, mass, area, (4, 4), 1, 1.0)
    assert np.flatnonzero(full).tolist() == [1, 2, 4, 5, 6, 8, 9, 10]
    capped = grown_cells(core, mass, area, (4, 4), 1, 3 / 15)  # 15 cells have outside
    assert capped[5] and capped.sum() == 3 and capped[10] and capped[9]  # the core, then the most mass


def test_the_fill_comes_from_the_surroundings_not_the_region() -> None:
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, 20:44, 20:44] = 1.0  # a bright region on a dark field
    region = x[:, 0] > 0.5
    where = torch.zeros_like(region)
    where[:, 20:44, 46:50] = True  # a strip right beside the region
    x[:, :, 20:44, 46:50] = 0.7  # something there the model might use
    cfg = _cfg().counterfactual
    out = occluded(x, where, region, cfg)
    assert out[:, :, 20:44, 46:50].max() < 0.05  # the dark field, neither the region nor the strip itself
    assert torch.equal(out[:, :, ~where[0]], x[:, :, ~where[0]])  # nothing else changes


def _cfg(**counterfactual: object) -> AuditConfig:
    raw = {
        "run_name": "t",
        "model": {"kind": "torchvision", "arch": "resnet18", "checkpoint": "m.pt"},
        "data": {"manifest": "m.csv", "classes": ["a", "b"]},
        "counterfactual": counterfactual,
    }
    return parse_config(raw, base_dir=Path("."))


@pytest.mark.parametrize("relies", [True, False])
def test_the_excess_drop_finds_a_model_that_rests_on_what_its_map_points_at(relies: bool) -> None:
    """A model whose class-b score is the brightness of one corner (where its map points) loses it
    under the guided fill and not under the controls; a model that reads the region does not."""
    maps, region = _scene(b=4)
    maps[:, 0:8, 56:64] = 4.0
    x = torch.zeros(4, 3, 64, 64)
    x[:, :, 20:44, 20:44] = 0.5
    x[:, :, 0:8, 56:64] = 1.0  # the corner mark

    def forward(batch: torch.Tensor) -> torch.Tensor:
        source = batch[:, 0, 0:8, 56:64] if relies else batch[:, 0, 20:44, 20:44]
        score = 8 * source.mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(score), score], dim=1)

    cfg = _cfg()
    idx = torch.ones(4, dtype=torch.long)
    p = forward(x).softmax(dim=1)[:, 1]
    out = neutralised(cfg, forward, x, region, [None] * 4, idx, p, maps, (8, 8), [0, 1, 2, 3])
    assert set(out) >= {"occlusion_delta", "occlusion_guided_delta", "occlusion_control_delta", "occluded_area"}
    # the attended corner cell and its three neighbours, all outside the region
    assert torch.allclose(out["occluded_area"], torch.full((4,), 256 / 64**2, dtype=out["occluded_area"].dtype))
    # what was removed: the bright corner mark, at the border, far from the region
    assert torch.allclose(out["attended_mean_0"], torch.full((4,), 0.25, dtype=torch.float64))
    assert (out["attended_border"] < 0.25).all() and (out["attended_from_region"] > 0.15).all()
    if relies:
        assert (out["occlusion_delta"] > 0.4).all()
        assert (out["occlusion_control_delta"].abs() < 0.05).all()
    else:
        assert (out["occlusion_delta"].abs() < 1e-6).all()


def test_blur_evidence_leaves_the_occlusion_out() -> None:
    maps, region = _scene()
    cfg = _cfg(evidence="blur")
    x = torch.rand(2, 3, 64, 64)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([batch.mean(dim=(1, 2, 3)), -batch.mean(dim=(1, 2, 3))], dim=1)

    idx = torch.zeros(2, dtype=torch.long)
    out = neutralised(cfg, forward, x, region, [None, None], idx, forward(x).softmax(1)[:, 0], maps, (8, 8), [0, 1])
    assert "outside_delta" in out and "occlusion_delta" not in out


def test_a_control_that_removes_counter_evidence_does_not_inflate_the_excess() -> None:
    """Dots everywhere outside lower class b; the map points at an empty corner. The controls remove
    dots (class b rises: a negative drop); the guided fill removes nothing the model reads. The excess
    must stay at zero, not become evidence of reliance on the corner."""
    maps, region = _scene(b=4)
    maps[:, 0:8, 56:64] = 4.0
    x = torch.zeros(4, 3, 64, 64)
    x[:, :, 20:44, 20:44] = 0.5
    x[:, :, 4::8, 4::8] = 1.0  # a dot at the centre of every cell
    x[:, :, 0:16, 48:64] = 0.0  # none in the attended corner and its neighbours
    x[:, :, 20:44, 20:44] = 0.5

    read = torch.ones(8, 8)
    read[0:2, 6:8] = 0  # the model never reads the corner cells
    shown = float((x[0, 0, 4::8, 4::8] * read).sum())

    def forward(batch: torch.Tensor) -> torch.Tensor:
        dots = (batch[:, 0, 4::8, 4::8] * read).sum(dim=(1, 2))
        return torch.stack([torch.zeros_like(dots), shown - 1 - dots], dim=1)

    idx = torch.ones(4, dtype=torch.long)
    p = forward(x).softmax(dim=1)[:, 1]
    out = neutralised(_cfg(), forward, x, region, [None] * 4, idx, p, maps, (8, 8), [0, 1, 2, 3])
    assert (out["occlusion_guided_delta"].abs() < 1e-4).all()
    # every control removes dots, so raw it would read as a large excess; counted as no drop it is none
    c = _cfg().counterfactual
    controls = occlusion_masks(c.occlusion, maps, region, (8, 8), [0, 1, 2, 3])[1]
    raised = torch.stack([forward(occluded(x, where, region, c)).softmax(1)[:, 1] for where in controls])
    assert (raised > p + 0.1).all()
    assert (out["occlusion_control_delta"] == 0).all() and (out["occlusion_delta"].abs() < 1e-4).all()
