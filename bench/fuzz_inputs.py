"""Hostile-input benchmark: a 1,000-row manifest of good rows mixed with every kind of bad input,
audited end to end (manifest check, explain, aggregate, HTML and PDF report).

Prints rows read / included / excluded, crashes, silent drops, files read outside the data root
(every ``open`` of the planted outside folder, seen by a Python audit hook), pickle payloads executed
(the payload creates a folder when unpickled; one payload is also offered as the model checkpoint),
bad rows audited, good rows excluded, exclusions with the wrong reason, and the reasons histogram.
The last four of the first group must be 0.

    .venv/bin/python bench/fuzz_inputs.py [--rows 1000] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="build and audit here (kept afterwards) instead of a temporary folder")
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
        hs = build_hostile_set(base, kinds, pool=24)
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
                for name in ("exclusions.csv", "subgroups.csv", "disparities.csv")
            )
        expected = hs.expected.set_index("row")
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
    ok = ok and (result is None or (formulas == 0 and unescaped == 0))
    sys.exit(0 if ok and not good_excluded else 1)


if __name__ == "__main__":
    main()
