"""The audit as plain stage functions: prepare -> explain (per shard) -> aggregate -> render.

Stages talk through files in ``<run_dir>/work`` (paths, never tensors or models), so an orchestrator
(see ``flows/``) can run shards in parallel, retry one, or run them elsewhere; :func:`run_audit` runs
the same stages in-process without any orchestrator.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from audit import metrics
from audit.cam import (
    METHODS,
    CAMOutput,
    ClassIndex,
    FusedLayers,
    GradCAM,
    GuidedBackprop,
    GuidedGradCAM,
    NoiseAveraged,
    PredictedClass,
    find_target_layer,
)
from audit.config import AuditConfig, load_config
from audit.disparity import absence_like_classes, disparity_tests, permutations_needed, reliance_evidence
from audit.imaging import dilate, fill_from_surroundings, heavy_blur, image_tensor, open_image, open_mask, resize_mask
from audit.manifest import EXCLUSION_COLUMNS, load_manifest
from audit.models import load_model
from audit.provenance import sha256_bytes, sha256_file, sha256_of_hashes, versions
from audit.sanity import parameter_randomisation
from audit.sanity import verdict as sanity_verdict
from audit.stats import proportion_ci
from audit.subgroups import add_intersections, agreement, mean_ci, subgroup_columns, subgroup_table
from audit.verdict import decide, flag_images, nan_to_none

PATH_COLUMNS = ("image_path", "mask_path", "counterfactual_path", "artifact_mask_path")


def work_dir(cfg: AuditConfig) -> Path:
    return cfg.run_dir / "work"


def shard_output(shard: Path, kind: str) -> Path:
    """``shard_0003.parquet`` -> ``shard_0003.<kind>`` (result.parquet, exclusions.csv, maps.npz)."""
    return shard.with_name(shard.name.split(".")[0] + "." + kind)


def included_rows(cfg: AuditConfig) -> pd.DataFrame:
    """The manifest rows :func:`prepare` let through, with their file paths, from the shard files."""
    shards = sorted(work_dir(cfg).glob("shard_????.parquet"))
    return pd.concat([pd.read_parquet(p) for p in shards], ignore_index=True)


# --------------------------------------------------------------------------- prepare
def prepare(cfg: AuditConfig) -> list[Path]:
    """Check the manifest, record exclusions, and split the usable rows into shard files."""
    work = work_dir(cfg)
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("shard_*"):
        old.unlink()
    manifest = load_manifest(cfg)
    manifest.exclusions.to_csv(work / "exclusions_manifest.csv", index=False)
    (work / "counts.json").write_text(json.dumps({"rows_read": manifest.rows_read}))
    inc = manifest.included
    size = cfg.explain.shard_size
    shards = []
    for i, start in enumerate(range(0, len(inc), size)):
        path = work / f"shard_{i:04d}.parquet"
        inc.iloc[start : start + size].astype({"row": "int64"}).to_parquet(path, index=False)
        shards.append(path)
    return shards


# --------------------------------------------------------------------------- explain
@dataclass
class Explainer:
    model: torch.nn.Module
    method: Callable[..., CAMOutput]
    layers: tuple[str, ...]
    map_size: tuple[int, int]


def build_method(cfg: AuditConfig, model: torch.nn.Module, layers: tuple[str, ...]) -> Callable[..., CAMOutput]:
    """The configured method on the configured layer(s), optionally noise-averaged."""
    name = cfg.explain.method
    method: Callable[..., CAMOutput]
    if name == "guided-backprop":
        method = GuidedBackprop(model)
    elif name == "guided-gradcam":
        method = GuidedGradCAM(GradCAM(model, layers[0]))
    elif len(layers) == 1:
        method = METHODS[name](model, layers[0])
    else:
        method = FusedLayers([METHODS[name](model, layer) for layer in layers])
    smooth = cfg.explain.smooth
    return NoiseAveraged(method, smooth.n, smooth.sigma, smooth.seed) if smooth.n > 0 else method


@lru_cache(maxsize=2)
def _explainer(cfg: AuditConfig) -> Explainer:
    """One model per worker process, reused across its shards."""
    model = load_model(cfg.model, cfg.explain.device)
    h, w = cfg.preprocessing.size
    probe = torch.zeros(1, cfg.preprocessing.channels, h, w, device=cfg.explain.device)
    requested = cfg.explain.target_layer
    layers = (requested,) if isinstance(requested, str) else tuple(requested)
    layers = tuple(find_target_layer(model, probe) if layer == "auto" else layer for layer in layers)
    sizes = [tuple(METHODS["gradcam"](model, layer)(probe).layer_maps.shape[-2:]) for layer in layers]
    method = build_method(cfg, model, layers)
    return Explainer(model, method, layers, max(sizes))


def _neutralised(
    cfg: AuditConfig,
    ex: Explainer,
    x: torch.Tensor,
    masks: torch.Tensor,
    arts: list,
    idx: torch.Tensor,
    explained_p: torch.Tensor,
    maps: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Explained-class probability with the outside of the dilated mask (and, where annotated, just the
    artifact) replaced by the fill; the drop is the evidence the model took from that region. The
    artifact is filled from its surroundings only, so its own colour (a dark vignette, a purple
    stroke) never leaks into its fill."""
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
        annotated[have] = True  # an empty artifact mask is an annotation too: "no artifact here"
        out["mass_artifact"] = torch.where(has, metrics.mass_in(maps, art), torch.nan)
        out["artifact_area"] = torch.where(annotated, metrics.area(art), torch.nan)
    for name, xb in batches.items():
        with torch.no_grad():
            p = _probabilities(cfg, ex.model(xb)).gather(1, idx[:, None])[:, 0]
        delta = (explained_p - p).double()
        if name == "artifact":
            delta = torch.where(out["artifact_area"].isnan(), torch.nan, delta)
        out[f"{name}_delta"] = delta
    return out


def _probabilities(cfg: AuditConfig, logits: torch.Tensor) -> torch.Tensor:
    return logits.sigmoid() if cfg.explain.output == "sigmoid" else logits.softmax(dim=1)


def _target(cfg: AuditConfig, labels: list[str]) -> PredictedClass | ClassIndex:
    t = cfg.explained_target()
    if t == "predicted":
        return PredictedClass()
    if t == "label":
        return ClassIndex([cfg.data.classes.index(lab) for lab in labels])
    return ClassIndex(cfg.data.classes.index(t))


def explain_shard(cfg: AuditConfig, shard: Path) -> Path:
    """Explain one shard: per-image metrics to ``*.result.parquet``, layer maps to ``*.maps.npz``."""
    ex = _explainer(cfg)
    rows = pd.read_parquet(shard)
    pre, classes = cfg.preprocessing, cfg.data.classes
    results, excluded, map_ids, layer_maps = [], [], [], []
    bs = cfg.explain.batch_size
    for start in range(0, len(rows), bs):
        batch = rows.iloc[start : start + bs]
        xs, ms, arts, cfs, kept, hashes = [], [], [], [], [], []
        for _, r in batch.iterrows():
            try:
                # each file is read once: hashed for provenance and decoded from the same bytes
                image_bytes, mask_bytes = Path(r["image_path"]).read_bytes(), Path(r["mask_path"]).read_bytes()
                img = open_image(io.BytesIO(image_bytes), pre.channels)
                mask = open_mask(io.BytesIO(mask_bytes), cfg.data.mask_threshold)
                cf = art = None
                if isinstance(r.get("counterfactual_path"), str):
                    cf = image_tensor(open_image(Path(r["counterfactual_path"]), pre.channels), pre)
                if isinstance(r.get("artifact_mask_path"), str):
                    art_mask = open_mask(Path(r["artifact_mask_path"]), cfg.data.mask_threshold)
                    art = torch.from_numpy(resize_mask(art_mask, pre.size))
            except Exception as err:  # a file that passed the header check but fails to decode
                excluded.append(
                    {
                        "row": int(r["row"]),
                        "image_id": r["image_id"],
                        "stage": "explain",
                        "reason": f"cannot decode: {type(err).__name__}: {err}",
                    }
                )
                continue
            xs.append(image_tensor(img, pre))
            ms.append(torch.from_numpy(resize_mask(mask, pre.size)))
            hashes.append((sha256_bytes(image_bytes), sha256_bytes(mask_bytes)))
            arts.append(art)
            cfs.append(cf)
            kept.append(r)
        if not kept:
            continue
        x = torch.stack(xs).to(cfg.explain.device)
        out = ex.method(x, _target(cfg, [str(r["label"]) for r in kept]))
        masks = torch.stack(ms).to(out.maps.device)
        probs = _probabilities(cfg, out.logits)
        idx = out.target_index
        explained_p = probs.gather(1, idx[:, None])[:, 0]
        pred = probs.argmax(dim=1)
        multilabel = cfg.explain.output == "sigmoid"
        cols = metrics.localisation(out.maps, masks, cfg.metrics.top_k, cfg.metrics.bbox_threshold)
        if cfg.counterfactual.enabled:
            cols.update(_neutralised(cfg, ex, x, masks, arts, idx, explained_p, out.maps))
        cf_p = cf_pred = None
        if any(c is not None for c in cfs):
            have = [i for i, c in enumerate(cfs) if c is not None]
            with torch.no_grad():
                cf_logits = ex.model(torch.stack([cfs[i] for i in have]).to(cfg.explain.device))
                cf_probs = _probabilities(cfg, cf_logits)
            cf_p = torch.full((len(kept),), float("nan"), dtype=torch.float64)
            cf_pred = torch.full((len(kept),), -1, dtype=torch.long)
            sel = torch.as_tensor(have)
            cf_p[sel] = cf_probs.gather(1, idx[sel, None])[:, 0].double().cpu()
            cf_pred[sel] = cf_probs.argmax(dim=1).cpu()
        for i, r in enumerate(kept):
            rec = {k: r[k] for k in r.index if k not in PATH_COLUMNS}
            if multilabel:  # the row says its finding is present; the model agrees when p >= 0.5
                present = bool(explained_p[i] >= 0.5)
                finding = classes[int(idx[i])]
                predicted, probability, correct = (
                    (finding if present else f"no {finding}"),
                    float(explained_p[i]),
                    present,
                )
            else:
                predicted = classes[int(pred[i])]
                probability, correct = float(probs[i, pred[i]]), predicted == str(r["label"])
            rec.update(
                predicted=predicted,
                probability=probability,
                correct=correct,
                explained=classes[int(idx[i])],
                explained_probability=float(explained_p[i]),
                zero_map=bool(out.layer_maps[i].max() <= 0),
                image_sha256=hashes[i][0],
                mask_sha256=hashes[i][1],
            )
            rec.update({k: float(v[i]) for k, v in cols.items()})
            rec.update({f"p_{c}": float(probs[i, j]) for j, c in enumerate(classes)})
            if cf_p is not None:
                p_cf = float(cf_p[i])
                rec["counterfactual_probability"] = p_cf
                rec["counterfactual_delta"] = rec["explained_probability"] - p_cf
                if multilabel:
                    rec["counterfactual_flips"] = bool((p_cf >= 0.5) != (rec["explained_probability"] >= 0.5))
                else:
                    rec["counterfactual_flips"] = bool(cf_pred[i] >= 0 and int(cf_pred[i]) != int(pred[i]))
            results.append(rec)
            map_ids.append(int(r["row"]))
        layer_maps.append(out.layer_maps.detach().cpu().numpy().astype(np.float32))
    out_path = shard_output(shard, "result.parquet")
    pd.DataFrame(results).to_parquet(out_path, index=False)
    pd.DataFrame(excluded, columns=EXCLUSION_COLUMNS).to_csv(shard_output(shard, "exclusions.csv"), index=False)
    maps = np.concatenate(layer_maps) if layer_maps else np.zeros((0, *ex.map_size), np.float32)
    np.savez(shard_output(shard, "maps.npz"), rows=np.asarray(map_ids, dtype=np.int64), maps=maps)
    layer_info = {"layer": ", ".join(ex.layers), "map_size": list(ex.map_size)}
    (work_dir(cfg) / "layer.json").write_text(json.dumps(layer_info))
    return out_path


def sanity_check(cfg: AuditConfig) -> Path:
    """Cascading parameter randomisation on a seeded sample of the included images, written to
    ``work/sanity.csv`` (one row per step), or the reason it did not run to ``work/sanity.json``."""
    work = work_dir(cfg)
    table_path, skipped_path = work / "sanity.csv", work / "sanity.json"
    table_path.unlink(missing_ok=True)
    skipped_path.unlink(missing_ok=True)
    s = cfg.sanity
    reason = None
    if not s.enabled:
        reason = "disabled in the config (sanity.enabled: false)"
    elif cfg.model.kind not in ("torchvision", "factory"):
        reason = f"not available for {cfg.model.kind} models: their weights cannot be re-initialised"
    if reason is not None:
        skipped_path.write_text(json.dumps({"skipped": reason}))
        return skipped_path
    ex = _explainer(cfg)
    rows = included_rows(cfg)
    sample = rows.sample(n=min(s.sample, len(rows)), random_state=s.seed).sort_values("row")
    xs = []
    for path in sample["image_path"]:
        try:
            xs.append(image_tensor(open_image(Path(path), cfg.preprocessing.channels), cfg.preprocessing))
        except Exception:  # undecodable: explain_shard excludes it with the reason; not needed here
            continue
    if len(xs) < 2:
        skipped_path.write_text(json.dumps({"skipped": f"only {len(xs)} decodable image(s) to sample from"}))
        return skipped_path
    x = torch.stack(xs).to(cfg.explain.device)
    table = parameter_randomisation(ex.model, lambda m: build_method(cfg, m, ex.layers), x, s.seed, s.draws)
    table.to_csv(table_path, index=False, float_format="%.6g")
    return table_path


def _sanity_result(cfg: AuditConfig) -> dict:
    work = work_dir(cfg)
    if (work / "sanity.json").exists():
        return json.loads((work / "sanity.json").read_text())
    if not (work / "sanity.csv").exists():
        return {"skipped": "the sanity stage did not run"}
    table = pd.read_csv(work / "sanity.csv")
    warning = sanity_verdict(table, cfg.sanity.max_similarity, cfg.sanity.steps)
    return {"steps": table.to_dict("records"), "warning": warning}


# --------------------------------------------------------------------------- aggregate
def aggregate(cfg: AuditConfig, results: list[Path]) -> dict:
    """Merge shards into images.parquet, subgroups.csv, exclusions.csv and a summary."""
    work, run = work_dir(cfg), cfg.run_dir
    frames = [pd.read_parquet(p) for p in results]
    images = (
        pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame()
    )
    exclusions = pd.concat(
        [pd.read_csv(work / "exclusions_manifest.csv", dtype={"image_id": str})]
        + [pd.read_csv(shard_output(p, "exclusions.csv"), dtype={"image_id": str}) for p in results],
        ignore_index=True,
    )
    exclusions = exclusions.sort_values("row", kind="stable").reset_index(drop=True)
    rows_read = json.loads((work / "counts.json").read_text())["rows_read"]
    if images.empty:
        raise ValueError(
            f"no usable image in {cfg.data.manifest}: all {rows_read} rows were excluded (see {run / 'exclusions.csv'})"
        )
    images = images.sort_values("row", kind="stable").reset_index(drop=True)
    images["flagged"] = flag_images(images, cfg)
    images = add_intersections(cfg, images)  # saved, so the report and users see the same groups
    assert len(images) + len(exclusions) == rows_read, "a manifest row was lost"
    layer = json.loads((work / "layer.json").read_text())
    n_perm = permutations_needed(cfg, subgroup_columns(cfg), images)
    tests = disparity_tests(cfg, images, subgroup_columns(cfg), n_perm)
    table = subgroup_table(cfg, images, tests)
    sanity = _sanity_result(cfg)
    verdict = decide(table, images, tuple(layer["map_size"]), cfg, sanity)
    run.mkdir(parents=True, exist_ok=True)
    images.to_parquet(run / "images.parquet", index=False)
    table.to_csv(run / "subgroups.csv", index=False, float_format="%.6g")
    tests.to_csv(run / "disparities.csv", index=False, float_format="%.6g")
    exclusions.to_csv(run / "exclusions.csv", index=False)
    overall = {}
    for metric in metrics.MEANINGS:
        m, lo, hi = mean_ci(cfg, images[metric], "all", metric)
        overall[metric] = {
            "mean": nan_to_none(m),
            "ci_low": nan_to_none(lo),
            "ci_high": nan_to_none(hi),
            "median": nan_to_none(float(images[metric].median())),
            "n": int(images[metric].notna().sum()),
        }
    summary = {
        "verdict": verdict.status,
        "reasons": verdict.reasons,
        "checks": verdict.checks,
        "rows_read": rows_read,
        "included": len(images),
        "excluded": len(exclusions),
        "flagged_images": int(images["flagged"].sum()),
        "zero_maps": int(images["zero_map"].sum()),
        "accuracy": float(images["correct"].mean()),
        "accuracy_ci": list(proportion_ci(int(images["correct"].sum()), len(images), cfg.stats.ci_level)),
        "flagged_correct": int((images["flagged"] & images["correct"]).sum()),
        "agreement": agreement(cfg, images),
        "correction": cfg.stats.correction,
        "area_mean": float(images["area"].mean()),
        "overall": overall,
        "sanity": sanity,
        "layer": layer["layer"],
        "map_size": layer["map_size"],
        "explained": cfg.explain.target,
        "n_permutations": n_perm,
        "reliance_evidence": {str(k): int(v) for k, v in reliance_evidence(images).value_counts().items()},
        "absence_classes": list(cfg.data.absence_classes),
        "absence_like_classes": absence_like_classes(cfg, images, subgroup_columns(cfg)),
        "data_sha256": sha256_of_hashes(list(images["image_sha256"]) + list(images["mask_sha256"])),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------- provenance + render
def write_run_info(cfg: AuditConfig, config_path: Path, started: datetime, finished: datetime) -> Path:
    summary = json.loads((work_dir(cfg) / "summary.json").read_text())
    info = {
        "run_name": cfg.run_name,
        "config_file": str(config_path),
        "config": json.loads(cfg.model_dump_json()),
        "model_sha256": sha256_file(cfg.model.identity_file),
        "manifest_sha256": sha256_file(cfg.data.manifest),
        "data_sha256": summary["data_sha256"],
        "seeds": {
            "stats.seed": cfg.stats.seed,
            "n_boot": cfg.stats.n_boot,
            "n_permutations": summary["n_permutations"],
        },
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "verdict": summary["verdict"],
    }
    path = cfg.run_dir / "run.json"
    path.write_text(json.dumps(info, indent=2))
    return path


def render(cfg: AuditConfig, config_path: Path, started: datetime) -> dict[str, str]:
    from audit.report import render_report  # heavy imports (weasyprint) only when rendering

    write_run_info(cfg, config_path, started, datetime.now(UTC))
    return render_report(cfg)


@dataclass
class RunResult:
    run_dir: Path
    verdict: str
    outputs: dict[str, str]


def run_audit(config_path: str | Path) -> RunResult:
    """All stages in this process, without an orchestrator."""
    started = datetime.now(UTC)
    cfg = load_config(config_path)
    shards = prepare(cfg)
    results = [explain_shard(cfg, s) for s in shards]
    sanity_check(cfg)
    summary = aggregate(cfg, results)
    outputs = render(cfg, Path(config_path), started)
    return RunResult(cfg.run_dir, summary["verdict"], outputs)
