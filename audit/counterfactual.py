"""Counterfactual neutralisation: a map is correlational, a changed prediction is evidence.

Two kinds: *neutralised* (the outside of the dilated region, and where annotated just the artifact,
replaced by what the image shows around it) and *supplied* (the team's own artifact-free rendering of
the image). Each gives the drop in the explained class's probability; the drop is the evidence the
model took from what was removed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from audit import metrics
from audit.config import AuditConfig
from audit.imaging import dilate, fill_from_surroundings, heavy_blur

Forward = Callable[[torch.Tensor], torch.Tensor]


def probabilities(cfg: AuditConfig, logits: torch.Tensor) -> torch.Tensor:
    return logits.sigmoid() if cfg.explain.output == "sigmoid" else logits.softmax(dim=1)


def neutralised(
    cfg: AuditConfig,
    forward: Forward,
    x: torch.Tensor,
    masks: torch.Tensor,
    arts: list[torch.Tensor | None],
    idx: torch.Tensor,
    explained_p: torch.Tensor,
    maps: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per image: ``outside_delta`` (outside of the dilated mask replaced by the fill) and, where an
    artifact mask is given, ``artifact_delta``, ``mass_artifact`` and ``artifact_area``. The artifact is
    filled from its surroundings only, so its own colour (a dark vignette, a purple stroke) never
    leaks into its fill; an empty artifact mask is an annotation too ("no artifact here": drop ~0)."""
    c = cfg.counterfactual
    fill = heavy_blur(x, c.blur_factor) if c.fill == "blur" else x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    keep = dilate(masks, round(c.dilate * max(x.shape[-2:])))[:, None].to(x.dtype)
    batches = {"outside": x * keep + fill * (1 - keep)}
    out: dict[str, torch.Tensor] = {}
    have = [i for i, a in enumerate(arts) if a is not None]
    if have:
        art = torch.zeros_like(masks, dtype=torch.bool)
        art[have] = torch.stack([arts[i] for i in have]).to(art.device)
        a = art[:, None].to(x.dtype)
        batches["artifact"] = x * (1 - a) + fill_from_surroundings(x, art, c.blur_factor, c.fill) * a
        has = art.flatten(1).any(dim=1)
        annotated = torch.zeros_like(has)
        annotated[have] = True
        out["mass_artifact"] = torch.where(has, metrics.mass_in(maps, art), torch.nan)
        out["artifact_area"] = torch.where(annotated, metrics.area(art), torch.nan)
    for name, xb in batches.items():
        with torch.no_grad():
            p = probabilities(cfg, forward(xb)).gather(1, idx[:, None])[:, 0]
        delta = (explained_p - p).double()
        if name == "artifact":
            delta = torch.where(out["artifact_area"].isnan(), torch.nan, delta)
        out[f"{name}_delta"] = delta
    return out


def supplied(
    cfg: AuditConfig, forward: Forward, cfs: list[torch.Tensor | None], idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Explained-class probability and predicted class on the supplied counterfactual renderings
    (NaN and -1 where a row has none), or None when no row in the batch has one."""
    have = [i for i, c in enumerate(cfs) if c is not None]
    if not have:
        return None
    with torch.no_grad():
        cf_probs = probabilities(cfg, forward(torch.stack([cfs[i] for i in have]).to(cfg.explain.device)))
    cf_p = torch.full((len(cfs),), float("nan"), dtype=torch.float64)
    cf_pred = torch.full((len(cfs),), -1, dtype=torch.long)
    sel = torch.as_tensor(have)
    cf_p[sel] = cf_probs.gather(1, idx[sel, None])[:, 0].double().cpu()
    cf_pred[sel] = cf_probs.argmax(dim=1).cpu()
    return cf_p, cf_pred
