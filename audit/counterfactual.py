"""Counterfactual neutralisation: a map is correlational, a changed prediction is evidence.

Three kinds: *neutralised* (the outside of the dilated region, and where annotated just the artifact,
replaced by what the image shows around it), *occluded* (the outside cells the map points at, filled
from their surroundings, against randomly chosen outside cells of the same area: the evidence a
region mask alone can give) and *supplied* (the team's own artifact-free rendering of the image).
Each gives the drop in the explained class's probability; the drop is the evidence the model took
from what was removed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from audit import metrics
from audit.config import AuditConfig, Counterfactual, Occlusion
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
    layer_shape: tuple[int, int] | None = None,
    rows: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Per image: ``outside_delta`` (outside of the dilated mask replaced by the fill) and, where an
    artifact mask is given, ``artifact_delta``, ``mass_artifact`` and ``artifact_area``. The artifact is
    filled from its surroundings only, so its own colour (a dark vignette, a purple stroke) never
    leaks into its fill; an empty artifact mask is an annotation too ("no artifact here": drop ~0).
    With ``counterfactual.evidence: occlusion`` also ``occlusion_delta`` (the guided fill's drop minus
    the controls' mean drop, a control's rise counted as no drop), ``occlusion_guided_delta``,
    ``occlusion_control_delta`` and ``occluded_area`` (the guided fill's share of the image), on the
    grid of ``layer_shape``, the controls seeded by the manifest ``rows``."""
    c = cfg.counterfactual
    batches = {"outside": outside_replaced(x, masks, c)}
    out: dict[str, torch.Tensor] = {}
    have = [i for i, a in enumerate(arts) if a is not None]
    if have:
        art = torch.zeros_like(masks, dtype=torch.bool)
        art[have] = torch.stack([arts[i] for i in have]).to(art.device)
        batches["artifact"] = artifact_filled(x, art, c)
        has = art.flatten(1).any(dim=1)
        annotated = torch.zeros_like(has)
        annotated[have] = True
        out["mass_artifact"] = torch.where(has, metrics.mass_in(maps, art), torch.nan)
        out["artifact_area"] = torch.where(annotated, metrics.area(art), torch.nan)
    occlusion = c.evidence == "occlusion" and layer_shape is not None and rows is not None
    if occlusion:
        guided, controls, cells = occlusion_masks(c.occlusion, maps, masks, layer_shape, rows)
        for name, where in [("guided", guided), *((f"control_{k}", m) for k, m in enumerate(controls))]:
            batches[name] = occluded(x, where, masks, c)
        out["occluded_area"] = metrics.area(guided)
        out.update(attended_appearance(x, guided, masks))
        out["attended_cells"] = torch.from_numpy(cells)
    drops = {}
    for name, xb in batches.items():
        with torch.no_grad():
            p = probabilities(cfg, forward(xb)).gather(1, idx[:, None])[:, 0]
        drops[name] = (explained_p - p).double()
    out["outside_delta"] = drops["outside"]
    if "artifact" in drops:
        out["artifact_delta"] = torch.where(out["artifact_area"].isnan(), torch.nan, drops["artifact"])
    if occlusion:
        # a control whose fill *raised* the explained class removed counter-evidence, not an off-target
        # effect of filling: it counts as no drop, so it cannot inflate the guided fill's excess
        control = torch.stack([drops[n].clamp_min(0) for n in drops if n.startswith("control_")]).mean(dim=0)
        out["occlusion_guided_delta"] = drops["guided"]
        out["occlusion_control_delta"] = control
        # a map with no mass outside the region has nothing there to remove: both fills are empty, drop 0
        out["occlusion_delta"] = drops["guided"] - control
    return out


def outside_replaced(x: torch.Tensor, masks: torch.Tensor, c: Counterfactual) -> torch.Tensor:
    """``x`` with everything beyond the masks (B, H, W) dilated by ``c.dilate`` of the side replaced
    by ``c.fill`` (a heavy blur of the image itself, or its mean colour)."""
    fill = heavy_blur(x, c.blur_factor) if c.fill == "blur" else x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    keep = dilate(masks, round(c.dilate * max(x.shape[-2:])))[:, None].to(x.dtype)
    return x * keep + fill * (1 - keep)


def artifact_filled(x: torch.Tensor, artifact: torch.Tensor, c: Counterfactual) -> torch.Tensor:
    """``x`` with the artifact (B, H, W) filled from the pixels around it only, so its own colour never
    leaks into its fill."""
    a = artifact[:, None].to(x.dtype)
    return x * (1 - a) + fill_from_surroundings(x, artifact, c.blur_factor, c.fill) * a


def occluded(x: torch.Tensor, where: torch.Tensor, region: torch.Tensor, c: Counterfactual) -> torch.Tensor:
    """``x`` with the pixels ``where`` (B, H, W) filled from their surroundings; neither the filled
    pixels nor the region's own feed the fill (a lesion must not spread into the patch beside it)."""
    w = where[:, None].to(x.dtype)
    fill = fill_from_surroundings(x, where | region.bool(), c.blur_factor, c.fill)
    return x * (1 - w) + fill * w


def occlusion_masks(
    o: Occlusion, maps: torch.Tensor, region: torch.Tensor, layer_shape: tuple[int, int], rows: list[int]
) -> tuple[torch.Tensor, list[torch.Tensor], np.ndarray]:
    """The guided occlusion (B, H, W), ``o.controls`` matched controls of the same area, and the
    guided cells on the grid (B, gh, gw).

    Cells are the explained layer's grid (capped at ``o.max_grid`` a side): a map cannot say more
    than its resolution. Guided: the outside cells holding ``o.mass_share`` of the map's mass outside
    the region (dilated by ``o.margin``), largest first, at most ``o.max_area`` of the outside area.
    Control: randomly ordered other outside cells until they cover as many pixels."""
    b, h, w = maps.shape
    gh, gw = (min(s, o.max_grid) for s in layer_shape)
    cell = ((torch.arange(h) * gh // h)[:, None] * gw + (torch.arange(w) * gw // w)[None, :]).flatten()
    cell = cell.to(maps.device)
    outside = ~dilate(region, round(o.margin * max(h, w))).flatten(1)
    mass = torch.zeros(b, gh * gw, dtype=torch.float64, device=maps.device)
    mass.index_add_(1, cell, (maps.flatten(1).double() * outside).nan_to_num(0.0))
    area = torch.zeros_like(mass).index_add_(1, cell, outside.double())
    mass_np, area_np = mass.cpu().numpy(), area.cpu().numpy()
    guided = np.zeros((b, gh * gw), bool)
    controls = np.zeros((o.controls, b, gh * gw), bool)
    for i in range(b):
        core = guided_cells(mass_np[i], area_np[i], o.mass_share, o.max_area)
        guided[i] = grown_cells(core, mass_np[i], area_np[i], (gh, gw), o.grow, o.max_area)
        rng = np.random.default_rng([o.seed, int(rows[i])])
        for k in range(o.controls):
            controls[k, i] = control_cells(area_np[i], guided[i], rng)

    def to_pixels(selected: np.ndarray) -> torch.Tensor:
        picked = torch.from_numpy(selected).to(maps.device)[:, cell]
        return (picked & outside).reshape(b, h, w)

    return to_pixels(guided), [to_pixels(controls[k]) for k in range(o.controls)], guided.reshape(b, gh, gw)


def attended_appearance(x: torch.Tensor, where: torch.Tensor, region: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the guided occlusion removed, described so that images attending to the same kind of
    thing group together wherever it lies (:mod:`audit.discovery`): per channel the mean and spread of
    the input there, how close it lies to the image's border (0 at the border, 1 at the centre) and to
    the region (in image sides). NaN where nothing was removed."""
    ch, h, w = x.shape[1:]
    weight = where.to(x.dtype)
    n = weight.sum(dim=(1, 2))
    empty = n <= 0
    out = {}
    for k in range(ch):
        mean = (x[:, k] * weight).sum(dim=(1, 2)) / n.clamp_min(1)
        var = ((x[:, k] - mean[:, None, None]) ** 2 * weight).sum(dim=(1, 2)) / n.clamp_min(1)
        out[f"attended_mean_{k}"] = mean.double()
        out[f"attended_std_{k}"] = var.sqrt().double()
    yy = torch.arange(h, device=x.device, dtype=x.dtype)[:, None].expand(h, w)
    xx = torch.arange(w, device=x.device, dtype=x.dtype)[None, :].expand(h, w)
    edge = torch.minimum(torch.minimum(yy, h - 1 - yy), torch.minimum(xx, w - 1 - xx)) / (min(h, w) / 2)
    out["attended_border"] = ((edge * weight).sum(dim=(1, 2)) / n.clamp_min(1)).double()
    regions = region.bool().cpu().numpy()
    apart = np.stack([ndimage.distance_transform_edt(~r) if r.any() else np.zeros(r.shape) for r in regions])
    apart_t = torch.from_numpy(apart).to(x.device, x.dtype) / max(h, w)
    out["attended_from_region"] = ((apart_t * weight).sum(dim=(1, 2)) / n.clamp_min(1)).double()
    return {k: torch.where(empty.to(v.device), torch.nan, v) for k, v in out.items()}


def guided_cells(mass: np.ndarray, area: np.ndarray, share: float, max_area: float) -> np.ndarray:
    """Cells by outside mass, largest first, until ``share`` of the outside mass is covered, never past
    ``max_area`` of the outside area (the first cell always, if it holds any mass)."""
    chosen = np.zeros(mass.shape, bool)
    total = mass.sum()
    if total <= 0:
        return chosen
    order = np.argsort(-mass, kind="stable")
    order = order[mass[order] > 0]
    covered = np.cumsum(mass[order])
    used = np.cumsum(area[order])
    k = int(np.searchsorted(covered, share * total - 1e-12 * total)) + 1
    k = min(k, len(order))
    k = max(1, min(k, int(np.searchsorted(used, max_area * area.sum(), side="right"))))
    chosen[order[:k]] = True
    return chosen


def grown_cells(
    core: np.ndarray, mass: np.ndarray, area: np.ndarray, grid: tuple[int, int], grow: int, max_area: float
) -> np.ndarray:
    """``core`` and its neighbours within ``grow`` cells, where there is outside to fill: a deep layer's
    cell answers to what lies around it, so the attended thing may sit in the next cell. Past
    ``max_area`` of the outside area the neighbours with the least mass are left out (the core stays)."""
    if grow <= 0 or not core.any():
        return core
    near = ndimage.binary_dilation(core.reshape(grid), np.ones((3, 3), bool), iterations=grow).ravel() & (area > 0)
    order = np.lexsort((-mass, ~core))  # core cells first, then by mass
    order = order[near[order]]
    budget = max(area[core].sum(), max_area * area.sum())
    keep = order[np.cumsum(area[order]) <= budget + 1e-9]
    chosen = core.copy()
    chosen[keep] = True
    return chosen


def control_cells(area: np.ndarray, guided: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Other outside cells in random order, as many as bring their area closest to the guided cells'
    (all of them where the outside is too small)."""
    chosen = np.zeros(area.shape, bool)
    target = area[guided].sum()
    candidates = np.flatnonzero((area > 0) & ~guided)
    if target <= 0 or not len(candidates):
        return chosen
    order = rng.permutation(candidates)
    used = np.cumsum(area[order])
    k = int(np.argmin(np.abs(used - target))) + 1
    chosen[order[:k]] = True
    return chosen


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
