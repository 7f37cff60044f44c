"""Hostile-input benchmark: a 1,000-row manifest of good rows mixed with every kind of bad input,
audited end to end (manifest check, explain, aggregate, HTML and PDF report).

Prints rows read / included / excluded, crashes, silent drops, files read outside the data root
(every ``open`` of the planted outside folder, seen by a Python audit hook), pickle payloads executed
(the payload creates a folder when unpickled; one payload is also offered as the model checkpoint),
bad rows audited, good rows excluded, exclusions with the wrong reason, and the reasons histogram.
The last four of the first group must be 0. Then the cost of the bad rows: the peak memory (max RSS)
of the same audit in a fresh process with and without them (their ratio must stay under 1.5), and with
``--per-kind`` the peak of a small audit of good rows plus a few rows of each kind alone.

    .venv/bin/python bench/fuzz_inputs.py [--rows 1000] [--seed 0] [--format csv] [--per-kind] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from audit.config import ModelSource
from audit.examples.hostile import BAD, GOOD, KINDS, build_hostile_set
from audit.models import ModelError, build_torchvision, load_model
from audit.pipeline import run_audit

warnings.filterwarnings("ignore", message="Detected pickle protocol")  # torch, on the refused payload

OPENED: list[str] = []
WATCH: list[str] = []


def hook(event: str, args: tuple) -> None:
    if event == "open" and WATCH and isinstance(args[0], str | Path) and str(args[0]).startswith(WATCH[0]):
        OPENED.append(str(args[0]))


def risky(cell: str) -> bool:
    """A cell a spreadsheet would run as a formula (plain numbers such as -0.5 are safe)."""
    return cell[:1] in ("=", "+", "-", "@") and not cell.lstrip("+-").replace(".", "", 1).replace("e-", "").isdigit()


PEAK = """
import json, resource, sys, warnings
warnings.filterwarnings("ignore")
from audit.pipeline import run_audit
try:
    run_audit(sys.argv[1], overwrite=True)
    ok = True
except Exception as err:
    ok = f"{type(err).__name__}: {err}"[:300]
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ok": ok}))
"""


def peak_of(config: Path) -> dict:
    """The audit of ``config`` in a fresh process: its peak RSS in MB, and whether it finished."""
    done = subprocess.run([sys.executable, "-c", PEAK, str(config)], capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {"peak_mb": float("nan"), "ok": done.stderr[-300:]}


def variant(base: Path, hs_manifest: Path, rows: pd.DataFrame, name: str) -> Path:
    """A copy of the audit's config whose manifest holds only ``rows`` (same data root)."""
    manifest = hs_manifest.with_name(f"{name}{hs_manifest.suffix}")
    frame = _read_manifest(hs_manifest).iloc[rows.index]
    _write_manifest(frame, manifest)
    cfg = yaml.safe_load((base / "fuzz.yaml").read_text())
    cfg["run_name"], cfg["data"]["manifest"] = f"fuzz-{name}", str(manifest)
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _read_manifest(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_json(path, lines=True, dtype=False) if path.suffix == ".jsonl" else pd.read_parquet(path)


def _write_manifest(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)


def memory(base: Path, hs_manifest: Path, expected: pd.DataFrame, per_kind: bool) -> bool:
    """Peak RSS with and without the bad rows (and per kind); True when the ratio is at most 1.5."""
    rows = expected.reset_index(drop=True)
    good = rows[rows["kind"].isin(GOOD)]
    clean, hostile = peak_of(variant(base, hs_manifest, good, "good-only")), peak_of(base / "fuzz.yaml")
    ratio = hostile["peak_mb"] / clean["peak_mb"]
    print(f"\npeak memory (max RSS of a fresh process running the audit): good rows only {clean['peak_mb']:.0f} MB, "
          f"with the bad rows {hostile['peak_mb']:.0f} MB, ratio {ratio:.2f} (limit 1.5)")  # fmt: skip
    if per_kind:
        few = good.iloc[:48]
        print(f"per kind: {len(few)} good rows plus up to 8 rows of the kind, peak MB (ratio to the good rows alone)")
        alone = peak_of(variant(base, hs_manifest, few, "kind-none"))["peak_mb"]
        for kind in KINDS:
            these = pd.concat([few, rows[rows["kind"] == kind].iloc[:8]])
            got = peak_of(variant(base, hs_manifest, these[~these.index.duplicated()], f"kind-{kind}"))
            note = "" if got["ok"] is True else f"  (did not finish: {got['ok']})"
            print(f"  {kind:20s} {got['peak_mb']:7.0f} ({got['peak_mb'] / alone:.2f}){note}")
    return ratio <= 1.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="build and audit here (kept afterwards) instead of a temporary folder")
    ap.add_argument("--format", default="csv", choices=["csv", "jsonl", "parquet"], help="the manifest's format")
    ap.add_argument("--per-kind", action="store_true", help="also the peak memory of each kind alone")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    # half good rows (every good kind), half bad (every bad kind equally often), shuffled
    kinds = [GOOD[i % len(GOOD)] for i in range(args.rows // 2)] + [
        list(BAD)[i % len(BAD)] for i in range(args.rows - args.rows // 2)
    ]
    kinds = [kinds[0], *rng.permutation(kinds[1:]).tolist()] if kinds[0] in GOOD else kinds
    if kinds[0] not in GOOD:
        kinds.insert(0, GOOD[0])
        kinds.pop()
    sys.addaudithook(hook)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        if args.keep:
            base.mkdir(parents=True, exist_ok=False)
        t0 = time.perf_counter()
        hs = build_hostile_set(base, kinds, pool=24, fmt=args.format)
        built = time.perf_counter() - t0
        torch.manual_seed(0)
        torch.save(build_torchvision("mobilenet_v3_small", 2).state_dict(), base / "model.pt")
        cfg = {
            "run_name": "fuzz",
            "output_dir": str(base / "reports"),
            "model": {"arch": "mobilenet_v3_small", "checkpoint": str(base / "model.pt"), "num_classes": 2},
            "preprocessing": {"size": [64, 64]},
            "explain": {"target_layer": "features.8"},
            "data": {"manifest": str(hs.manifest), "classes": ["nevus", "melanoma"], "subgroups": ["site", "sex"]},
            "stats": {"n_boot": 500},
        }
        (base / "fuzz.yaml").write_text(yaml.safe_dump(cfg))
        WATCH.append(str(hs.outside.resolve()))
        crashes, crash_note = 0, ""
        t0 = time.perf_counter()
        try:
            result = run_audit(base / "fuzz.yaml")
        except Exception as err:  # the number this benchmark exists to keep at zero
            crashes, crash_note, result = 1, f"{type(err).__name__}: {err}", None
        audited = time.perf_counter() - t0
        payload = base / "root" / "bad" / "payload.pt"
        try:  # the same payload offered as the model checkpoint
            load_model(ModelSource(kind="torchvision", arch="mobilenet_v3_small", checkpoint=payload, num_classes=2))
            checkpoint_refused = False
        except ModelError:
            checkpoint_refused = True
        WATCH.clear()
        payloads = int(hs.marker.exists())
        if result is None:
            print(f"CRASH: {crash_note}")
            images, exclusions = pd.DataFrame(columns=["row"]), pd.DataFrame(columns=["row", "reason"])
        else:
            images = pd.read_parquet(result.run_dir / "images.parquet")
            exclusions = pd.read_csv(result.run_dir / "exclusions.csv", keep_default_na=False)
            report_ok = (result.run_dir / "report.pdf").read_bytes()[:5] == b"%PDF-"
            html = (result.run_dir / "report.html").read_text()
            unescaped = html.count("<script>alert(1)</script>")
            formulas = sum(
                int(pd.read_csv(result.run_dir / name, dtype=str, keep_default_na=False).map(risky).to_numpy().sum())
                for name in ("exclusions.csv", "subgroups.csv", "disparities.csv", "work/exclusions_manifest.csv")
            )
        expected = hs.expected.set_index("row")
        memory_ok = memory(base, hs.manifest, hs.expected, args.per_kind)
    accounted = set(images["row"]) | set(exclusions["row"])
    silent = len(kinds) - len(accounted) + (len(images) + len(exclusions) - len(accounted))
    bad_rows = expected[expected["kind"].isin(list(BAD))]
    reasons = exclusions.set_index("row")["reason"] if len(exclusions) else pd.Series(dtype=str)
    bad_audited = int(bad_rows.index.isin(images["row"]).sum())
    good_excluded = int(expected[expected["kind"].isin(GOOD)].index.isin(reasons.index).sum())
    wrong = [
        (k, reasons[r]) for r, k, ph in zip(bad_rows.index, bad_rows["kind"], bad_rows["phrase"], strict=True)
        if r in reasons.index and ph not in reasons[r]
    ]  # fmt: skip
    print(f"hostile manifest: {len(kinds)} rows ({sum(k in GOOD for k in kinds)} good, {len(bad_rows)} bad, "
          f"{len(KINDS)} kinds), built in {built:.1f} s, audited end to end in {audited:.1f} s")  # fmt: skip
    print(f"rows read                   {len(kinds)}")
    print(f"included                    {len(images)}")
    print(f"excluded                    {len(exclusions)}")
    print(f"crashes                     {crashes}")
    print(f"silent drops                {silent}")
    print(f"files read outside the root {len(OPENED)}")
    print(f"payloads executed           {payloads}  (payload checkpoint refused: {checkpoint_refused})")
    print(f"bad rows audited            {bad_audited}")
    print(f"good rows excluded          {good_excluded}")
    print(f"wrong reason                {len(wrong)}")
    if result is not None:
        print(f"audited, performance only   {int((~images['localised']).sum())}  (rows without a mask)")
        print(f"formula cells in the CSVs   {formulas}")
        print(f"unescaped HTML in report    {unescaped}")
        print(f"report.pdf written          {report_ok}")
    print("\nreasons (by the kind of row planted):")
    hist = Counter(expected.loc[r, "kind"] for r in reasons.index)
    for kind, n in sorted(hist.items(), key=lambda kv: -kv[1]):
        example = reasons[bad_rows.index[bad_rows["kind"] == kind][0]] if kind in BAD else ""
        print(f"  {n:4d}  {kind:18s} {example[:90]}")
    for k, r in wrong[:5]:
        print(f"  WRONG: {k}: {r}")
    ok = crashes == 0 and silent == 0 and not OPENED and payloads == 0 and not wrong and not bad_audited
    ok = ok and (result is None or (formulas == 0 and unescaped == 0)) and memory_ok
    sys.exit(0 if ok and not good_excluded else 1)


if __name__ == "__main__":
    main()
