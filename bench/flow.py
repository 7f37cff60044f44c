"""The whole flow at scale: local task runner against Dask, on generated audit sets.

    .venv/bin/python bench/flow.py [--sizes 1000,10000] [--workers 2] [--runners local,dask]
                                   [--cache .cache/bench-flow]

Per size, an audit set is generated once (the demo's generator, 128 px, cached under ``--cache``) and
a seeded, untrained MobileNetV3-Small is audited with the demo's settings, end to end (``audit run``
in a fresh process: imports, Prefect, manifest check, Grad-CAM and counterfactuals per shard, sanity
check, statistics, HTML and PDF), once per runner:

- ``local``: Prefect's thread pool with ``--workers`` threads,
- ``dask``: prefect-dask's ``DaskTaskRunner`` on a ``LocalCluster`` of ``--workers`` processes,

both with one torch thread per worker (``explain.threads: 1``: the same arithmetic, so the results
must be byte-identical) and ``--fresh`` (every shard computed, none from the shard cache). Printed:
Grad-CAM's own rate on the same model and batch (images decoded beforehand, ``--workers`` torch
threads) and its plain forward's, the floor that the counterfactuals' extra forwards put under the
share of time outside Grad-CAM (were everything else free), then per run the wall time, images/s end
to end, the share of wall time outside the engine (1 - (images / engine rate) / wall), the stage
times the run recorded (``run.json``), peak RSS of the flow process and the peak of the summed RSS of
it and all its descendants (Prefect's server, Dask's scheduler and workers), and whether ``images.parquet``
and ``subgroups.csv`` are identical between the runners.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


def audit_set(cache: Path, n: int) -> Path:
    from audit.examples.synth import generate

    root = cache / f"set_{n}"
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        t = time.perf_counter()
        generate(root, n, seed=11, size=128, workers=2)
        print(f"generated {n} images in {time.perf_counter() - t:.0f} s", flush=True)
    return manifest


def model(cache: Path) -> Path:
    from audit.models import build_torchvision

    path = cache / "mobilenet_v3_small_seed0.pt"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(build_torchvision("mobilenet_v3_small", 2).state_dict(), path)
    return path


def config(cache: Path, manifest: Path, weights: Path, n: int, runner: str, workers: int) -> Path:
    cfg = {
        "run_name": f"flow_{n}_{runner}",
        "output_dir": str(cache / "reports"),
        "model": {"kind": "torchvision", "arch": "mobilenet_v3_small", "checkpoint": str(weights), "num_classes": 2},
        "preprocessing": {"size": [128, 128]},
        "explain": {"target_layer": "features.8", "batch_size": 32, "shard_size": 120, "threads": 1},
        "data": {"manifest": str(manifest), "classes": ["nevus", "melanoma"], "subgroups": ["site", "sex", "age_band"]},
        "thresholds": {"min_group_size": 10},
        "stats": {"n_boot": 2000, "seed": 0},
        "orchestration": {"runner": "threads" if runner == "local" else "dask", "workers": workers},
    }  # fmt: skip
    path = cache / f"flow_{n}_{runner}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class TreePeak:
    """Peak of the summed RSS of this process and all its descendants (Prefect's server, Dask's
    scheduler and workers), sampled every 0.2 s: what the run costs the machine."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.2):
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def child(config_path: str) -> None:
    """One audit in this (fresh) process; prints wall time and peak RSS as JSON."""
    tree = TreePeak()
    start = time.perf_counter()
    from flows.audit_flow import run_flow

    result = run_flow(config_path, overwrite=True, fresh=True)
    print(json.dumps({
        "wall_s": time.perf_counter() - start,
        "rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_tree_mb": tree.stop(),
        "verdict": result["verdict"], "run_dir": result["run_dir"],
    }))  # fmt: skip


@dataclass(frozen=True)
class Engine:
    """Grad-CAM's own rate, and the plain forward's on the same model, runtime, batch and threads."""

    gradcam: float  # images/s
    forward: float  # images/s, no gradient
    backend: str
    counterfactuals: bool  # the config's counterfactual.enabled


def engine_rate(manifest: Path, weights: Path, threads: int, n: int = 512) -> Engine:
    """Images/s of Grad-CAM alone as the audit runs it (the same model, layer, backend, batch of 32
    and input size), on ``n`` images decoded beforehand, with as many threads as the flow had workers;
    and of the plain forward the counterfactuals run on the same batches."""
    from audit.cam import PredictedClass
    from audit.config import load_config
    from audit.inputs import RowReader, to_tensor
    from audit.pipeline import explainer

    cfg = load_config(config(weights.parent, manifest, weights, 0, "engine", threads))
    cfg = cfg.model_copy(update={"explain": cfg.explain.model_copy(update={"threads": threads})})
    ex = explainer(cfg)
    reader = RowReader(cfg)
    rows = pd.read_csv(manifest).head(n).to_dict("records")
    x = torch.stack([to_tensor(reader.read({**r, "row": i}).image, cfg.preprocessing) for i, r in enumerate(rows)])

    def rate(fn: Callable[[torch.Tensor], object]) -> float:
        fn(x[:32])  # warm-up
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for b in range(0, len(x), 32):
                fn(x[b : b + 32])
            best = min(best, time.perf_counter() - start)
        return len(x) / best

    with torch.no_grad():
        forward = rate(ex.model)
    gradcam = rate(lambda batch: ex.method(batch, PredictedClass()))
    return Engine(gradcam, forward, ex.backend.backend, cfg.counterfactual.enabled)


def counterfactual_forwards(manifest: Path, counterfactuals: bool = True) -> float:
    """Forwards per image besides Grad-CAM's: with ``counterfactual.enabled``, the outside-neutralised
    image always and the artifact-neutralised one where the manifest names an artifact mask; the
    supplied counterfactual rendering where it names one. (A batch with any artifact mask is forwarded
    whole, so this undercounts: the floor it gives is, if anything, too low.)"""
    m = pd.read_csv(manifest)

    def named(column: str) -> float:
        return float(m[column].notna().mean()) if column in m else 0.0

    neutralised = 1.0 + named("artifact_mask_path") if counterfactuals else 0.0
    return neutralised + named("counterfactual_path")


def floor_outside(engine: Engine, forwards: float) -> float:
    """The smallest share of wall time outside Grad-CAM that the counterfactual forwards alone force,
    with nothing else (decoding, metrics, statistics, report, start-up) costing anything."""
    extra = forwards / engine.forward
    return extra / (1 / engine.gradcam + extra)


def stages(run_dir: str, wall: float, workers: int) -> str:
    """Where the wall time went, from the stage times the run recorded in run.json."""
    t = json.loads((Path(run_dir) / "run.json").read_text()).get("seconds", {})
    explain, prepare, sanity, aggregate = (t.get(k, 0.0) for k in ("explain_sum_over_shards", "prepare", "sanity",
                                                                    "aggregate"))  # fmt: skip
    rest = wall - (prepare + explain / workers + sanity + aggregate)
    return (f"{'':>15}stages: prepare {prepare:.1f} s, explain {explain:.1f} s summed over shards "
            f"(~{explain / workers:.1f} s on {workers} workers), sanity {sanity:.1f} s, "
            f"aggregate {aggregate:.1f} s; imports, Prefect and the report: ~{rest:.1f} s (estimate)")  # fmt: skip


def run_one(path: Path) -> dict:
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{path.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def outputs(run_dir: str) -> tuple[bytes, bytes]:
    return (Path(run_dir) / "images.parquet").read_bytes(), (Path(run_dir) / "subgroups.csv").read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runners", default="local,dask")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench-flow")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    weights = model(cache)
    runners = args.runners.split(",")
    print(f"{os.cpu_count()} cores; {args.workers} workers x 1 torch thread; torch {torch.__version__}")
    sizes = [int(s) for s in args.sizes.split(",")]
    manifest = audit_set(cache, sizes[0])
    engine = engine_rate(manifest, weights, args.workers)
    forwards = counterfactual_forwards(manifest, engine.counterfactuals)
    print(f"Grad-CAM alone (same model, backend {engine.backend}, batch 32, {args.workers} threads): "
          f"{engine.gradcam:.0f} images/s; its plain forward {engine.forward:.0f} images/s")  # fmt: skip
    print(f"counterfactual forwards per image: {forwards:.1f}; with everything else free, the share outside "
          f"Grad-CAM could not fall below {floor_outside(engine, forwards):.0%}")  # fmt: skip
    head = f"{'images':>7} {'runner':>6} {'wall s':>7} {'images/s':>9} {'outside':>8} {'peak RSS flow MB':>17}"
    print(f"{head} {'all processes MB':>17}  verdict")
    rss = {}
    for n in sizes:
        manifest = audit_set(cache, n)
        results = {}
        for runner in runners:
            r = run_one(config(cache, manifest, weights, n, runner, args.workers))
            results[runner] = r
            outside = 1 - (n / engine.gradcam) / r["wall_s"]
            print(f"{n:>7} {runner:>6} {r['wall_s']:>7.1f} {n / r['wall_s']:>9.1f} {outside:>8.0%} "
                  f"{r['rss_self_mb']:>17.0f} {r['rss_tree_mb']:>17.0f}  {r['verdict']}", flush=True)  # fmt: skip
            print(stages(r["run_dir"], r["wall_s"], args.workers), flush=True)
        rss[n] = {k: r["rss_self_mb"] for k, r in results.items()}
        if {"local", "dask"} <= set(results):
            same = outputs(results["local"]["run_dir"]) == outputs(results["dask"]["run_dir"])
            print(f"{n:>7} dask vs local: images.parquet and subgroups.csv {'identical' if same else 'DIFFER'}")

    if len(sizes) > 1:
        for runner in runners:
            ratio = rss[sizes[-1]][runner] / rss[sizes[0]][runner]
            print(f"peak RSS of the flow, {runner}: {sizes[-1]} / {sizes[0]} images = {ratio:.2f}")


if __name__ == "__main__":
    main()
