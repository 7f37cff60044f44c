"""The audit as plain stage functions: prepare -> explain (per shard) -> aggregate -> render.

Stages talk through files in ``<run_dir>/work`` (paths, never tensors or models), so an orchestrator
(see ``flows/``) can run shards in parallel, retry one, or run them elsewhere; :func:`run_audit` runs
the same stages in-process without any orchestrator.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import torch

from audit import backend, metrics
from audit.backend import Choice
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
from audit.config import AuditConfig, ConfigError, Explain, ModelSource, Preprocessing, load_config
from audit.counterfactual import neutralised, probabilities, supplied
from audit.discovery import discover
from audit.disparity import absence_like_classes, disparity_tests, permutations_needed, reliance_evidence
from audit.imaging import resize_mask
from audit.inputs import InputError, RowReader, Sample, to_tensor
from audit.inputs.reader import FILE_COLUMNS
from audit.manifest import EXCLUSION_COLUMNS, ManifestError, exclusion, load_manifest
from audit.models import load_model
from audit.provenance import sha256_bytes, sha256_file, sha256_of_hashes, versions
from audit.runfolder import RunFolder, atomic, load_run, shard_output
from audit.sanity import parameter_randomisation
from audit.sanity import verdict as sanity_verdict
from audit.shardcache import ShardCache, shard_key
from audit.stats import proportion_ci, side_by_side, usable_cpus
from audit.subgroups import add_intersections, agreement, mean_ci, subgroup_columns, subgroup_table
from audit.tables import read_csv, write_csv
from audit.verdict import decide, flag_images, nan_to_none


def work_dir(cfg: AuditConfig) -> Path:
    return RunFolder(cfg.run_dir).work


def included_rows(cfg: AuditConfig) -> pd.DataFrame:
    """The manifest rows :func:`prepare` let through, with their file paths, from the shard files."""
    return RunFolder(cfg.run_dir).included_rows()


# --------------------------------------------------------------------------- prepare
def preflight(cfg: AuditConfig) -> None:
    """Everything checkable before any image is read: the files the config names exist, and the
    model fits the config (one class name per output, the layer exists and gives a spatial map).
    Raises ConfigError / ManifestError / ModelError with one line that names the key."""
    if not cfg.data.manifest.is_file():
        raise ManifestError(f"data.manifest: {cfg.data.manifest} not found")
    if not cfg.data.data_root.is_dir():
        raise ConfigError(f"data.root: {cfg.data.data_root} is not a folder")
    if cfg.data.mask.coco is not None and not cfg.data.mask.coco.is_file():
        raise ConfigError(f"data.mask.coco: {cfg.data.mask.coco} not found")
    explainer(cfg)


def nothing_usable(cfg: AuditConfig, exclusions: pd.DataFrame, rows_read: int) -> NoReturn:
    """Stop the run, leaving the reasons where the message says."""
    path = RunFolder(cfg.run_dir).exclusions
    write_csv(exclusions, path)
    raise ManifestError(
        f"no usable image in {cfg.data.manifest}: all {rows_read} rows were excluded (reasons in {path})"
    )


def prepare(cfg: AuditConfig, overwrite: bool = False) -> list[Path]:
    """Check the config against the model, claim the run folder, check the manifest, record
    exclusions, and split the usable rows into shard files."""
    began = time.perf_counter()
    preflight(cfg)
    RunFolder(cfg.run_dir).claim(overwrite)
    work = work_dir(cfg)
    manifest = load_manifest(cfg)
    write_csv(manifest.exclusions, work / "exclusions_manifest.csv")  # no formula cell, even in work/
    (work / "counts.json").write_text(json.dumps({"rows_read": manifest.rows_read}))
    inc = manifest.included
    if inc.empty:  # stop before loading anything else
        nothing_usable(cfg, manifest.exclusions, manifest.rows_read)
    size = cfg.explain.shard_size
    shards = []
    for i, start in enumerate(range(0, len(inc), size)):
        path = work / f"shard_{i:04d}.parquet"
        inc.iloc[start : start + size].astype({"row": "int64"}).to_parquet(path, index=False)
        shards.append(path)
    RunFolder(cfg.run_dir).record_time("prepare", time.perf_counter() - began)
    return shards


# --------------------------------------------------------------------------- explain
@dataclass
class Explainer:
    model: torch.nn.Module  # what runs every forward: the loaded model or its ONNX twin (see backend)
    method: Callable[..., CAMOutput]
    layers: tuple[str, ...]
    map_size: tuple[int, int]
    loaded: torch.nn.Module  # the model as loaded (the sanity check re-initialises its weights)
    backend: Choice


def build_method(explain: Explain, model: torch.nn.Module, layers: tuple[str, ...]) -> Callable[..., CAMOutput]:
    """The configured method on the configured layer(s), optionally noise-averaged."""
    name = explain.method
    method: Callable[..., CAMOutput]
    if name == "guided-backprop":
        method = GuidedBackprop(model)
    elif name == "guided-gradcam":
        method = GuidedGradCAM(GradCAM(model, layers[0]))
    elif len(layers) == 1:
        method = METHODS[name](model, layers[0])
    else:
        method = FusedLayers([METHODS[name](model, layer) for layer in layers])
    smooth = explain.smooth
    return NoiseAveraged(method, smooth.n, smooth.sigma, smooth.seed) if smooth.n > 0 else method


_PER_THREAD = threading.local()


def explainer(cfg: AuditConfig) -> Explainer:
    """One model per worker thread, reused across its shards (a CAM's hooks capture one forward pass
    at a time: threads must not share a model); raises ConfigError when the model and the config
    disagree (number of classes, input size, layer)."""
    exports = backend.export_cache(cfg.orchestration.cache_dir)
    key = (cfg.model, cfg.preprocessing, cfg.explain, cfg.data.classes, exports)
    cache: dict = _PER_THREAD.__dict__.setdefault("explainers", {})
    if key not in cache:
        if len(cache) >= 2:
            cache.pop(next(iter(cache)))
        cache[key] = _build_explainer(*key)
    return cache[key]


def use_threads(explain: Explain) -> None:
    """torch's intra-op threads as configured (process-wide; part of the numerics, see Explain)."""
    if explain.threads is not None and torch.get_num_threads() != explain.threads:
        torch.set_num_threads(explain.threads)


def _build_explainer(
    src: ModelSource, pre: Preprocessing, explain: Explain, classes: tuple[str, ...], exports: Path
) -> Explainer:
    use_threads(explain)
    model = load_model(src, explain.device)
    h, w = pre.size
    probe = torch.zeros(1, pre.channels, h, w, device=explain.device)
    try:
        with torch.no_grad():
            logits = model(probe)
    except Exception as err:
        raise ConfigError(
            f"preprocessing: the model does not accept {pre.channels}-channel {h}x{w} input "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    outputs = int(logits.shape[-1])
    if logits.ndim != 2 or outputs != len(classes):
        raise ConfigError(
            f"data.classes: {len(classes)} names for a model with {outputs} outputs "
            f"(output shape {tuple(logits.shape)}); list one class name per output, in the model's order"
        )
    requested = explain.target_layer
    layers = (requested,) if isinstance(requested, str) else tuple(requested)
    layers = tuple(find_target_layer(model, probe) if layer == "auto" else layer for layer in layers)
    sizes = []
    for layer in layers:
        try:
            maps = METHODS["gradcam"](model, layer)(probe).layer_maps
        except Exception as err:
            raise ConfigError(f"explain.target_layer: {layer!r} cannot be explained: {err}") from None
        sizes.append(tuple(maps.shape[-2:]))
    runner, choice = backend.choose(model, src, pre, explain, lambda m: build_method(explain, m, layers), exports)
    return Explainer(runner, build_method(explain, runner, layers), layers, max(sizes), model, choice)


def _target(cfg: AuditConfig, labels: list[str]) -> PredictedClass | ClassIndex:
    t = cfg.explained_target()
    if t == "predicted":
        return PredictedClass()
    if t == "label":
        return ClassIndex([cfg.data.classes.index(lab) for lab in labels])
    return ClassIndex(cfg.data.classes.index(t))


ReadBatch = tuple[list[dict], list[Sample], list[dict]]  # the rows read, their samples, the exclusions


def read_rows(reader: RowReader, rows: list[dict]) -> ReadBatch:
    """Step 1, read: decode each row's files. A row that fails (decode error, truncated data, a file
    changed since the manifest check) becomes that row's exclusion; the others go on."""
    kept, samples, excluded = [], [], []
    for r in rows:
        try:
            samples.append(reader.read(r))
        except InputError as err:
            excluded.append(exclusion(int(r["row"]), r["image_id"], "explain", err))
            continue
        except Exception as err:  # never let one row stop the shard
            err = InputError(f"cannot read: {type(err).__name__}: {err}")
            excluded.append(exclusion(int(r["row"]), r["image_id"], "explain", err))
            continue
        kept.append(r)
    return kept, samples, excluded


def reads_ahead(cfg: AuditConfig) -> bool:
    """Read the next batch while this one is explained, where a core is free for it: on a GPU (the CPU
    mostly waits), or when the configured workers x ``explain.threads`` leave a core idle (threads not
    pinned: torch takes every core, so none is free). Measured on one shard of 640 demo images, 16
    cores: 4 threads 144-147 -> 197-198 images/s, an H200 247-252 -> 304-313; with every core
    computing it only contends: 16 threads 155-179 -> 138-139, 2 threads on 2 cores 13 % slower."""
    if cfg.explain.device.startswith("cuda"):
        return True
    threads = cfg.explain.threads
    return threads is not None and cfg.orchestration.workers * threads < usable_cpus()


def read_batches(reader: RowReader, batches: list[list[dict]], ahead: bool) -> Iterator[ReadBatch]:
    """``read_rows`` for each batch in order; with ``ahead`` the next batch is read on a background
    thread while the caller explains this one (decoding and hashing release the GIL). One batch ahead
    at most, so memory stays flat; the batches come out in order and the same either way."""
    if not ahead:
        yield from (read_rows(reader, batch) for batch in batches)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-reader") as pool:
        pending = [pool.submit(read_rows, reader, batch) for batch in batches[:1]]
        for following in [*batches[1:], None]:
            current = pending.pop().result()
            if following is not None:
                pending.append(pool.submit(read_rows, reader, following))
            yield current


@dataclass
class Explained:
    """Step 2's result for one batch: inputs as tensors, the maps, and the model's probabilities."""

    x: torch.Tensor
    masks: torch.Tensor
    arts: list[torch.Tensor | None]
    cfs: list[torch.Tensor | None]
    cam: CAMOutput
    probs: torch.Tensor
    explained_p: torch.Tensor


def explain_batch(cfg: AuditConfig, ex: Explainer, rows: list[dict], samples: list[Sample]) -> Explained:
    """Step 2, explain: the samples at the model's input size through the CAM method."""
    pre = cfg.preprocessing

    def at_input_size(region: np.ndarray | None) -> torch.Tensor | None:
        return None if region is None else torch.from_numpy(resize_mask(region, pre.size))

    x = torch.stack([to_tensor(s.image, pre) for s in samples]).to(cfg.explain.device)
    cam = ex.method(x, _target(cfg, [str(r["label"]) for r in rows]))
    nothing = torch.zeros(pre.size, dtype=torch.bool)  # rows without a region: measured, then blanked
    masks = torch.stack([nothing if s.region is None else at_input_size(s.region) for s in samples])
    masks = masks.to(cam.maps.device)
    probs = probabilities(cfg, cam.logits)
    return Explained(
        x=x,
        masks=masks,
        arts=[at_input_size(s.artifact) for s in samples],
        cfs=[None if s.counterfactual is None else to_tensor(s.counterfactual, pre) for s in samples],
        cam=cam,
        probs=probs,
        explained_p=probs.gather(1, cam.target_index[:, None])[:, 0],
    )


def _outcome(cfg: AuditConfig, label: str, probs: torch.Tensor, idx: int, explained_p: float) -> dict:
    classes = cfg.data.classes
    if cfg.explain.output == "sigmoid":  # the row says its finding is present; the model agrees when p >= 0.5
        present = explained_p >= 0.5
        finding = classes[idx]
        return {"predicted": finding if present else f"no {finding}", "probability": explained_p, "correct": present}
    pred = int(probs.argmax())
    return {"predicted": classes[pred], "probability": float(probs[pred]), "correct": classes[pred] == label}


def region_sha256(sample: Sample) -> str:
    """The mask file's SHA-256, or for regions that come from no file of their own (COCO, boxes) the
    SHA-256 of the region's shape and bits ('' for a row without a region)."""
    if "mask_path" in sample.sha256:
        return sample.sha256["mask_path"]
    if sample.region is None:
        return ""
    return sha256_bytes(np.asarray(sample.region.shape, np.int64).tobytes() + np.packbits(sample.region).tobytes())


def measure(cfg: AuditConfig, ex: Explainer, rows: list[dict], samples: list[Sample], e: Explained) -> list[dict]:
    """Step 3, measure: per image the outcome, the localisation metrics and the counterfactuals."""
    idx = e.cam.target_index
    cols = metrics.localisation(e.cam.maps, e.masks, cfg.metrics.top_k, cfg.metrics.bbox_threshold)
    if cfg.counterfactual.enabled:
        grid, row_ids = tuple(e.cam.layer_maps.shape[-2:]), [int(r["row"]) for r in rows]
        cols.update(neutralised(cfg, ex.model, e.x, e.masks, e.arts, idx, e.explained_p, e.cam.maps, grid, row_ids))
    attended = cols.pop("attended_cells", None)  # (B, gh, gw): the cells the guided occlusion filled
    cf = supplied(cfg, ex.model, e.cfs, idx)
    # no region, no localisation: metrics that need the region (and the outside's neutralisation) are NaN
    localised = torch.as_tensor([s.region is not None for s in samples])
    for name in cols:
        if name not in ("mass_artifact", "artifact_area", "artifact_delta"):
            cols[name] = torch.where(localised.to(cols[name].device), cols[name], torch.nan)
    classes, records = cfg.data.classes, []
    for i, (r, sample) in enumerate(zip(rows, samples, strict=True)):
        rec = {k: v for k, v in r.items() if k not in FILE_COLUMNS}
        p_explained = float(e.explained_p[i])
        rec.update(_outcome(cfg, str(r["label"]), e.probs[i], int(idx[i]), p_explained))
        rec.update(
            explained=classes[int(idx[i])],
            explained_probability=p_explained,
            zero_map=bool(e.cam.layer_maps[i].max() <= 0),
            image_sha256=sample.sha256["image_path"],
            mask_sha256=region_sha256(sample),
            image_format=sample.image.description,
            localised=sample.region is not None,
            localisation_note=sample.no_region,
        )
        rec.update({k: float(v[i]) for k, v in cols.items()})
        if attended is not None:  # on the grid "HxW", row-major; '' for a row without a region
            cells = np.flatnonzero(attended[i].numpy()) if sample.region is not None else []
            rec["attended_grid"] = "x".join(map(str, attended.shape[1:]))
            rec["attended_cells"] = " ".join(map(str, cells))
        rec.update({f"p_{c}": float(e.probs[i, j]) for j, c in enumerate(classes)})
        if cf is not None:
            p_cf, pred_cf = float(cf[0][i]), int(cf[1][i])
            rec["counterfactual_probability"] = p_cf
            rec["counterfactual_delta"] = p_explained - p_cf
            if pred_cf < 0:  # this row has no counterfactual rendering: nothing flipped or held
                rec["counterfactual_flips"] = None
            elif cfg.explain.output == "sigmoid":
                rec["counterfactual_flips"] = bool((p_cf >= 0.5) != (p_explained >= 0.5))
            else:
                rec["counterfactual_flips"] = bool(pred_cf != int(e.probs[i].argmax()))
        records.append(rec)
    return records


def explain_shard(cfg: AuditConfig, shard: Path, fresh: bool = False) -> Path:
    """Explain one shard, or copy its outputs from the shard cache when a shard with the same content
    key (model, rows, files, settings, code: :mod:`audit.shardcache`) finished before; ``fresh``
    recomputes it anyway. Records whether it was reused in ``*.cache.json``."""
    start = time.perf_counter()
    rows = pd.read_parquet(shard)
    use_threads(cfg.explain)  # before the key: the thread count is part of it
    runtime = explainer(cfg).backend  # so is the runtime the backend choice resolved to
    cache, key = ShardCache.of(cfg), shard_key(cfg, rows, {"backend": runtime.backend, "export": runtime.export_sha256})
    reused = not fresh and cache.restore(key, shard)
    stored = reused
    if not reused:
        compute_shard(cfg, shard, rows.to_dict("records"))
        stored = cache.store(key, shard)
    mark = {"key": key.key, "reused": reused, "stored": stored, "seconds": round(time.perf_counter() - start, 2)}
    shard_output(shard, "cache.json").write_text(json.dumps(mark))
    return shard_output(shard, "result.parquet")


def compute_shard(cfg: AuditConfig, shard: Path, rows: list[dict]) -> Path:
    """Explain one shard, batch by batch: read -> explain -> measure. Per-image records to
    ``*.result.parquet``, layer maps to ``*.maps.npz``, rows that could not be read to ``*.exclusions.csv``."""
    ex = explainer(cfg)
    results, excluded, map_ids, layer_maps = [], [], [], []
    batches = [rows[start : start + cfg.explain.batch_size] for start in range(0, len(rows), cfg.explain.batch_size)]
    # closed here on an error too: the reader thread finishes its one pending batch and is joined now,
    # not whenever the generator is garbage-collected (a retried task's traceback may keep it alive)
    with contextlib.closing(read_batches(RowReader(cfg), batches, ahead=reads_ahead(cfg))) as read:
        for kept, samples, bad in read:
            excluded.extend(bad)
            if not kept:
                continue
            e = explain_batch(cfg, ex, kept, samples)
            results.extend(measure(cfg, ex, kept, samples, e))
            map_ids.extend(int(r["row"]) for r in kept)
            layer_maps.append(e.cam.layer_maps.detach().cpu().numpy().astype(np.float32))
    # each output written whole or not at all, and only by this shard: shards may run in parallel
    # and be retried, and a file a crashed task half wrote must never be read as a result
    maps = np.concatenate(layer_maps) if layer_maps else np.zeros((0, *ex.map_size), np.float32)
    layer_info = {"layer": ", ".join(ex.layers), "map_size": list(ex.map_size), "backend": ex.backend.as_dict()}
    with atomic(shard_output(shard, "layer.json")) as tmp:
        tmp.write_text(json.dumps(layer_info))
    with atomic(shard_output(shard, "maps.npz")) as tmp, tmp.open("wb") as f:
        np.savez(f, rows=np.asarray(map_ids, dtype=np.int64), maps=maps)
    with atomic(shard_output(shard, "exclusions.csv")) as tmp:
        write_csv(pd.DataFrame(excluded, columns=EXCLUSION_COLUMNS), tmp)  # no formula cell, even in work/
    out_path = shard_output(shard, "result.parquet")
    with atomic(out_path) as tmp:  # last: its presence means the shard is complete
        pd.DataFrame(results).to_parquet(tmp, index=False)
    return out_path


def sanity_check(cfg: AuditConfig) -> Path:
    """Cascading parameter randomisation on a seeded sample of the included images, written to
    ``work/sanity.csv`` (one row per step), or the reason it did not run to ``work/sanity.json``."""
    start = time.perf_counter()
    try:
        return _sanity_check(cfg)
    finally:
        RunFolder(cfg.run_dir).record_time("sanity", time.perf_counter() - start)


def _sanity_check(cfg: AuditConfig) -> Path:
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
    ex = explainer(cfg)
    rows = included_rows(cfg)
    sample = rows.sample(n=min(s.sample, len(rows)), random_state=s.seed).sort_values("row")
    reader, xs = RowReader(cfg), []
    for row in sample.to_dict("records"):
        try:
            xs.append(to_tensor(reader.read(row).image, cfg.preprocessing))
        except Exception:  # unreadable: explain_shard excludes it with the reason; not needed here
            continue
    if len(xs) < 2:
        skipped_path.write_text(json.dumps({"skipped": f"only {len(xs)} decodable image(s) to sample from"}))
        return skipped_path
    x = torch.stack(xs).to(cfg.explain.device)
    table = parameter_randomisation(ex.loaded, lambda m: build_method(cfg.explain, m, ex.layers), x, s.seed, s.draws)
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
    start = time.perf_counter()
    try:
        return _aggregate(cfg, results)
    finally:
        RunFolder(cfg.run_dir).record_time("aggregate", time.perf_counter() - start)


def _aggregate(cfg: AuditConfig, results: list[Path]) -> dict:
    work, run, folder = work_dir(cfg), cfg.run_dir, RunFolder(cfg.run_dir)
    frames = [pd.read_parquet(p) for p in results]
    images = (
        pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame()
    )
    exclusions = pd.concat(
        [read_csv(work / "exclusions_manifest.csv", dtype=str, keep_default_na=False)]
        + [read_csv(shard_output(p, "exclusions.csv"), dtype=str, keep_default_na=False) for p in results],
        ignore_index=True,
    )
    exclusions["row"] = exclusions["row"].astype(int)
    exclusions = exclusions.sort_values("row", kind="stable").reset_index(drop=True)
    rows_read = json.loads((work / "counts.json").read_text())["rows_read"]
    if images.empty:  # every row that passed the manifest check failed to decode
        nothing_usable(cfg, exclusions, rows_read)
    images = images.sort_values("row", kind="stable").reset_index(drop=True)
    images["flagged"] = flag_images(images, cfg)
    images = add_intersections(cfg, images)  # saved, so the report and users see the same groups
    assert len(images) + len(exclusions) == rows_read, "a manifest row was lost"
    layers = [json.loads(shard_output(r, "layer.json").read_text()) for r in results]
    layer = layers[0]
    runtimes = {json.dumps(x["backend"], sort_keys=True) for x in layers}
    if len(runtimes) > 1:  # every worker makes the same deterministic choice; if not, say so, never mix silently
        raise ConfigError(f"the shards of this run ran on different backends: {sorted(runtimes)}; set explain.backend")
    n_perm = permutations_needed(cfg, subgroup_columns(cfg), images)
    tests = disparity_tests(cfg, images, subgroup_columns(cfg), n_perm)
    table = subgroup_table(cfg, images, tests)
    candidates, images["candidate"] = discover(cfg, images, list(cfg.data.subgroups))
    sanity = _sanity_result(cfg)
    verdict = decide(table, images, tuple(layer["map_size"]), cfg, sanity, candidates)
    run.mkdir(parents=True, exist_ok=True)
    images.to_parquet(run / "images.parquet", index=False)
    write_csv(table, folder.subgroups)
    write_csv(tests, folder.disparities)
    write_csv(exclusions, folder.exclusions)
    write_csv(candidates, folder.discovery)
    write_maps(results, folder)
    folder.config.write_text(cfg.model_dump_json(indent=1))
    if (work / "sanity.csv").is_file():
        shutil.copyfile(work / "sanity.csv", folder.sanity)
    overall = {}
    cis = side_by_side(lambda metric: mean_ci(cfg, images[metric], "all", metric), list(metrics.MEANINGS))
    for metric, (m, lo, hi) in zip(metrics.MEANINGS, cis, strict=True):
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
        "performance_only": int((~images["localised"]).sum()),
        "excluded": len(exclusions),
        "flagged_images": int(images["flagged"].sum()),
        "zero_maps": int((images["zero_map"] & images["localised"]).sum()),
        "accuracy": float(images["correct"].mean()),
        "accuracy_ci": list(proportion_ci(int(images["correct"].sum()), len(images), cfg.stats.ci_level)),
        "flagged_correct": int((images["flagged"] & images["correct"]).sum()),
        "agreement": agreement(cfg, images),
        "correction": cfg.stats.correction,
        "area_mean": float(images["area"].mean()),
        "mask_kind": cfg.data.mask.kind,
        "overall": overall,
        "sanity": sanity,
        "layer": layer["layer"],
        "map_size": layer["map_size"],
        "evidence_grid": _evidence_grid(cfg, images),
        "backend": layer["backend"],
        "explained": cfg.explain.target,
        "n_permutations": n_perm,
        "reliance_evidence": {str(k): int(v) for k, v in reliance_evidence(images).value_counts().items()},
        "discovered_candidates": len(candidates),
        "discovered_shortcuts": int(candidates["shortcut"].sum()) if len(candidates) else 0,
        "absence_classes": list(cfg.data.absence_classes),
        "absence_like_classes": absence_like_classes(cfg, images, subgroup_columns(cfg)),
        "data_sha256": sha256_of_hashes(list(images["image_sha256"]) + list(images["mask_sha256"])),
    }
    folder.summary.write_text(json.dumps(summary, indent=2))
    return summary


def _evidence_grid(cfg: AuditConfig, images: pd.DataFrame) -> str | None:
    """The grid the mask-only evidence worked on, and its cells' size at the model's input: a thing
    smaller than a cell cannot be removed alone."""
    grids = images["attended_grid"].replace("", np.nan).dropna() if "attended_grid" in images else pd.Series([])
    if grids.empty:
        return None
    gh, gw = (int(v) for v in str(grids.iloc[0]).split("x"))
    h, w = cfg.preprocessing.size
    return f"{gh}x{gw} cells of {h / gh:.0f}x{w / gw:.0f} px at the model's {h}x{w} input"


def write_maps(results: list[Path], folder: RunFolder) -> None:
    """Every image's map, keyed by manifest row, in one file of the run (float16: display and
    comparison need no more)."""
    rows, maps = [], []
    for r in results:
        with np.load(shard_output(r, "maps.npz")) as z:
            rows.append(z["rows"])
            maps.append(z["maps"].astype(np.float16))
    order = np.argsort(np.concatenate(rows), kind="stable")
    np.savez_compressed(folder.maps, rows=np.concatenate(rows)[order], maps=np.concatenate(maps)[order])


# --------------------------------------------------------------------------- provenance + render
def write_run_info(cfg: AuditConfig, config_path: Path, started: datetime, finished: datetime) -> Path:
    summary = json.loads(RunFolder(cfg.run_dir).summary.read_text())
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
        "backend": summary.get("backend"),
        "shards": shard_reuse(cfg),
        "seconds": stage_seconds(cfg),
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "verdict": summary["verdict"],
    }
    path = RunFolder(cfg.run_dir).info
    path.write_text(json.dumps(info, indent=2))
    return path


def shard_marks(cfg: AuditConfig) -> list[dict]:
    """Each shard's ``*.cache.json``: its key, whether it was reused, how long it took."""
    return [json.loads(p.read_text()) for p in sorted(work_dir(cfg).glob("shard_????.cache.json"))]


def stage_seconds(cfg: AuditConfig) -> dict:
    """Wall seconds of the stages before rendering; the computed shards' time summed over shards (they
    may run side by side, so it can exceed the run's wall time), and the time spent copying cached ones."""
    folder = RunFolder(cfg.run_dir)
    times = json.loads(folder.timings.read_text()) if folder.timings.is_file() else {}
    marks = shard_marks(cfg)
    times["explain_sum_over_shards"] = round(sum(m.get("seconds", 0.0) for m in marks if not m["reused"]), 2)
    times["restored_shards"] = round(sum(m.get("seconds", 0.0) for m in marks if m["reused"]), 2)
    return times


def shard_reuse(cfg: AuditConfig) -> dict:
    """How many shards this run computed and how many it copied from the shard cache."""
    marks = shard_marks(cfg)
    reused = sum(m["reused"] for m in marks)
    return {"total": len(marks), "reused": reused, "computed": len(marks) - reused,
            "cache": str(ShardCache.of(cfg).root)}  # fmt: skip


def render(cfg: AuditConfig, config_path: Path, started: datetime) -> dict[str, str]:
    """Provenance, the gallery's cases (drawn from the images while they are at hand), then the report
    from the run folder alone."""
    from audit.gallery import write_cases
    from audit.report import render_report  # heavy imports (weasyprint) only when rendering

    write_run_info(cfg, config_path, started, datetime.now(UTC))
    run = load_run(cfg.run_dir)
    run.cases = write_cases(cfg, run.folder, run.images, run.subgroups, included_rows(cfg), run.discovery)
    outputs = render_report(run)
    run.folder.record_written()
    return outputs


@dataclass
class RunResult:
    run_dir: Path
    verdict: str
    outputs: dict[str, str]


def run_audit(config_path: str | Path, overwrite: bool = False, fresh: bool = False) -> RunResult:
    """All stages in this process, without an orchestrator."""
    started = datetime.now(UTC)
    cfg = load_config(config_path)
    shards = prepare(cfg, overwrite)
    results = [explain_shard(cfg, s, fresh) for s in shards]
    sanity_check(cfg)
    summary = aggregate(cfg, results)
    outputs = render(cfg, Path(config_path), started)
    return RunResult(cfg.run_dir, summary["verdict"], outputs)
