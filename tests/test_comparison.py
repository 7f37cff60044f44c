"""Run-against-run comparison: the subgroup that got worse is found, nothing else is, pairing follows
the images, and the gate (`audit check --baseline`, `audit diff`) exits by it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.comparison import compare_runs
from audit.config import load_config
from audit.runfolder import Run, RunFolder
from tests.conftest import write_config


def _images(seed: int, n_per_site: int = 60, ids: str = "img") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 3 * n_per_site
    return pd.DataFrame({
        "image_id": [f"{ids}{i:04d}" for i in range(n)],
        "label": "melanoma",
        "explained": "melanoma",
        "image_sha256": [f"{i:064x}" for i in range(n)] if ids == "img" else [f"{i + n:064x}" for i in range(n)],
        "mask_sha256": "m",
        "site": np.repeat(["site_a", "site_b", "site_c"], n_per_site),
        "localised": True,
        "zero_map": False,
        "focus": rng.lognormal(0.8, 0.6, n),
        "correct": rng.random(n) < 0.85,
        "flagged": False,  # recomputed by the comparison from focus and run B's thresholds
        "outside_delta": rng.uniform(0, 0.15, n),
    })  # fmt: skip


def _run(tmp: Path, name: str, images: pd.DataFrame, config: Path) -> Run:
    cfg = load_config(config).model_copy(update={"run_name": name})
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"subgroups": ("site",)})})
    empty = pd.DataFrame()
    return Run(RunFolder(tmp / name), cfg, {"verdict": "pass", "reasons": []}, {}, images, empty, empty, empty, None)


@pytest.fixture
def config(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> Path:
    return write_config(tmp_path / "c.yaml", tiny_set, tiny_model)


def test_the_subgroup_that_got_worse_is_found_and_no_other(config: Path, tmp_path: Path) -> None:
    a = _images(seed=1)
    b = a.copy()
    rng = np.random.default_rng(2)
    b["focus"] = a["focus"] * rng.lognormal(0, 0.05, len(a))  # noise everywhere
    c = (b["site"] == "site_c").to_numpy()
    b.loc[c, "focus"] = a.loc[c, "focus"] * 0.5  # site_c's attention halves
    b.loc[c, "outside_delta"] = np.where(rng.random(c.sum()) < 0.5, 0.6, a.loc[c, "outside_delta"])  # and relies
    result = compare_runs(_run(tmp_path, "v1", a, config), _run(tmp_path, "v2", b, config))
    worse = {(r.column, r.group, r.measure) for r in result.worse.itertuples()}
    assert {("site", "site_c", "focus"), ("site", "site_c", "outside_dependent")} <= worse
    assert all(group in ("site_c", "all") for _, group, _ in worse), worse
    assert result.table["paired"].all()
    row = result.table.set_index(["group", "measure"]).loc[("site_c", "focus")]
    assert row["change"] == pytest.approx((b.loc[c, "focus"] - a.loc[c, "focus"]).mean())
    assert row["ci_low"] < row["change"] < row["ci_high"] < 0
    assert result.summary()["same_images"] is True


def test_the_same_run_twice_changes_nothing(config: Path, tmp_path: Path) -> None:
    a = _images(seed=3)
    result = compare_runs(_run(tmp_path, "v1", a, config), _run(tmp_path, "v1b", a.copy(), config))
    assert result.worse.empty and result.better.empty and result.flag_changes.empty
    assert (result.table["change"] == 0).all() and (result.table["p_worse"] == 1).all()


def test_a_model_no_worse_is_not_called_worse(config: Path, tmp_path: Path) -> None:
    """Null worlds: B differs from A by noise only; over 20 seeds the gate may not cry wolf more than
    the one-sided family-wise alpha allows (expected about 0.5 of 20 at alpha 0.025)."""
    false_alarms = 0
    for seed in range(20):
        a = _images(seed=100 + seed, n_per_site=30)
        b = a.copy()
        rng = np.random.default_rng(seed)
        b["focus"] = rng.permutation(a["focus"].to_numpy())  # exchangeable: no change in distribution
        b["correct"] = rng.random(len(a)) < 0.85
        result = compare_runs(_run(tmp_path, "a", a, config), _run(tmp_path, "b", b, config))
        false_alarms += int(len(result.worse) > 0)
    assert false_alarms <= 3


def test_different_audit_sets_are_compared_unpaired(config: Path, tmp_path: Path) -> None:
    a, b = _images(seed=4), _images(seed=5, ids="other")
    b["focus"] *= 0.6
    result = compare_runs(_run(tmp_path, "a", a, config), _run(tmp_path, "b", b, config))
    assert not result.table["paired"].any() and result.flag_changes.empty
    assert ("all", "all", "focus") in {(r.column, r.group, r.measure) for r in result.worse.itertuples()}


def test_gate_against_a_baseline_and_the_diff_command(
    prefect_harness: None, tiny_set: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    base_cfg = write_config(tmp_path / "v1.yaml", tiny_set, tiny_model, run_name="v1", **{"sanity.enabled": False})
    assert runner.invoke(app, ["run", str(base_cfg)]).exit_code == 0
    new_cfg = write_config(tmp_path / "v2.yaml", tiny_set, tiny_model, run_name="v2", **{"sanity.enabled": False})
    reports = tmp_path / "reports"

    missing = runner.invoke(app, ["check", str(new_cfg), "--baseline", str(reports / "nowhere")])
    assert missing.exit_code == 2 and "no such run folder" in missing.output and not (reports / "v2").exists()

    same = runner.invoke(app, ["check", str(new_cfg), "--baseline", str(reports / "v1")])
    assert same.exit_code == 0, same.output  # the same model on the same set: nothing got worse
    assert "paired by image" in same.output
    folder = reports / "v2-vs-v1"
    table = pd.read_csv(folder / "comparison.csv")
    assert (table["change"] == 0).all() and not table["worse"].any() and len(table) == 6 * 4  # all + 5 groups
    assert (folder / "comparison.pdf").read_bytes()[:5] == b"%PDF-"

    # a baseline whose images were far better focused: v2 is worse (significant over all 24 images; a
    # site of 8 cannot reach significance after adjusting over 24 tests, and is not called worse)
    better = reports / "v1-better"
    shutil.copytree(reports / "v1", better)
    images = pd.read_parquet(better / "images.parquet")
    images["focus"] += 5.0
    images.to_parquet(better / "images.parquet", index=False)
    gated = runner.invoke(app, ["check", str(new_cfg), "--overwrite", "--baseline", str(better)])
    assert gated.exit_code == 1, gated.output
    assert "worse: focus in all = all" in gated.output and "worse: focus in site" not in gated.output

    out = tmp_path / "diff"
    diffed = runner.invoke(app, ["diff", str(better), str(reports / "v2"), "--out", str(out)])
    assert diffed.exit_code == 1 and "worse: focus in all = all" in diffed.output
    summary = json.loads((out / "comparison.json").read_text())
    worse = {(w["column"], w["group"], w["measure"]): w for w in summary["worse"]}
    assert summary["same_images"] and ("all", "all", "focus") in worse
    # the baseline's flags follow from its focus (judged by v2's threshold): fewer flags there
    assert {m for _, _, m in worse} <= {"focus", "flagged"}
    assert all(w["change"] == pytest.approx(-5.0) for (_, _, m), w in worse.items() if m == "focus")
    assert worse[("all", "all", "focus")]["p_worse_adjusted"] < summary["alpha"]
    assert "worse" in (out / "comparison.html").read_text()


def test_flags_are_judged_by_run_b_thresholds_and_repeated_rows_are_not_paired(config: Path, tmp_path: Path) -> None:
    a = _images(seed=6)
    run_a, run_b = _run(tmp_path, "a", a, config), _run(tmp_path, "b", a.copy(), config)
    looser = run_b.config.thresholds.model_copy(update={"focus": 0.5})
    run_b.config = run_b.config.model_copy(update={"thresholds": looser})
    result = compare_runs(run_a, run_b)  # same images, same maps, only B's threshold is looser
    assert result.flag_changes.empty and (result.table["change"] == 0).all()

    twice = pd.concat([a, a.iloc[:3]], ignore_index=True)  # a key repeated: pairing would be ambiguous
    result = compare_runs(_run(tmp_path, "a", twice, config), _run(tmp_path, "b", twice.copy(), config))
    assert not result.table.set_index(["column", "group"]).loc[("all", "all"), "paired"].any()
