"""Report benchmark: render time and size of the HTML report and PDF packet for 50, 200 and 1,000
flagged cases in the gallery (generated images, a seeded random model, every image flagged).

Prints, per gallery size: the time to draw the cases (read image, map, region -> JPEG), the time to
render HTML + PDF/A-3b from the run folder, and the two files' sizes. Target: 200 cases well under a
minute on 2 cores, PDF under 15 MB.

    .venv/bin/python bench/report.py [--cases 50,200,1000] [--size 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from audit.config import load_config
from audit.examples.synth import generate
from audit.gallery import write_cases
from audit.models import build_torchvision
from audit.pipeline import aggregate, explain_shard, included_rows, prepare, write_run_info
from audit.report import render_report
from audit.runfolder import RunFolder, load_run
from audit.tables import read_csv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="50,200,1000")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    args = ap.parse_args()
    sizes = [int(c) for c in args.cases.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        generate(base / "set", max(sizes), seed=11, size=args.size)
        torch.manual_seed(0)
        torch.save(build_torchvision("mobilenet_v3_small", 2).state_dict(), base / "model.pt")
        cfg_dict = {
            "run_name": "bench",
            "output_dir": str(base / "reports"),
            "model": {"arch": "mobilenet_v3_small", "checkpoint": str(base / "model.pt"), "num_classes": 2},
            "preprocessing": {"size": [args.size, args.size]},
            "data": {
                "manifest": str(base / "set" / "manifest.csv"),
                "classes": ["nevus", "melanoma"],
                "subgroups": ["site", "sex"],
            },
            "thresholds": {"focus": 1000.0},  # every image flagged: the gallery gets as many cases as asked
            "sanity": {"enabled": False},
            "stats": {"n_boot": 200},
        }
        (base / "c.yaml").write_text(yaml.safe_dump(cfg_dict))
        cfg = load_config(base / "c.yaml")
        results = [explain_shard(cfg, s) for s in prepare(cfg)]
        aggregate(cfg, results)
        write_run_info(
            cfg, base / "c.yaml", pd.Timestamp.now("UTC").to_pydatetime(), pd.Timestamp.now("UTC").to_pydatetime()
        )
        print(f"{max(sizes)} generated {args.size}-px images audited in {time.perf_counter() - t0:.1f} s "
              f"(2 cores, torch threads {torch.get_num_threads()})\n")  # fmt: skip
        folder = RunFolder(cfg.run_dir)
        images, subgroups, included = pd.read_parquet(folder.images), read_csv(folder.subgroups), included_rows(cfg)
        print(
            f"{'cases':>6} {'draw cases (s)':>15} {'render HTML+PDF (s)':>20} "
            f"{'HTML (MB)':>10} {'PDF (MB)':>9} {'pages':>6}"
        )
        for n in sizes:
            sized = cfg.model_copy(update={"report": cfg.report.model_copy(update={"max_cases": n})})
            folder.config.write_text(sized.model_dump_json(indent=1))
            t0 = time.perf_counter()
            write_cases(sized, folder, images, subgroups, included)
            drawn = time.perf_counter() - t0
            t0 = time.perf_counter()
            render_report(load_run(folder.path))
            rendered = time.perf_counter() - t0
            from pypdf import PdfReader

            pages = len(PdfReader(folder.pdf).pages)
            print(f"{n:>6} {drawn:>15.1f} {rendered:>20.1f} {folder.html.stat().st_size / 1e6:>10.1f} "
                  f"{folder.pdf.stat().st_size / 1e6:>9.1f} {pages:>6}")  # fmt: skip


if __name__ == "__main__":
    main()
