"""The whole audit, end to end on a tiny set: through the Prefect flow and without it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import write_config


@pytest.fixture
def hostile_set(tiny_set: Path, tmp_path: Path) -> Path:
    """The tiny set with an HTML-hostile subgroup value and one unusable row."""
    root = tmp_path / "set"
    shutil.copytree(tiny_set.parent, root)
    df = pd.read_csv(root / "manifest.csv")
    df.loc[df["site"] == "site_b", "site"] = "<script>alert(1)</script>"
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "image_id": "ghost", "image_path": "images/ghost.png"}
    df.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_flow_end_to_end(prefect_harness: None, hostile_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    from flows.audit_flow import audit_flow

    config = write_config(tmp_path / "audit.yaml", hostile_set, tiny_model)
    result = audit_flow(str(config))
    run = tmp_path / "reports" / "t"
    for name in ("report.html", "report.pdf", "images.parquet", "subgroups.csv", "exclusions.csv", "run.json"):
        assert (run / name).is_file(), name
    assert result["verdict"] in ("pass", "warn", "fail")

    images = pd.read_parquet(run / "images.parquet")
    exclusions = pd.read_csv(run / "exclusions.csv")
    assert len(images) + len(exclusions) == 25
    assert exclusions["image_id"].tolist() == ["ghost"]
    from audit.metrics import MEANINGS

    assert {*MEANINGS, "area", "predicted", "probability", "correct"} <= set(images)
    for share in ("mass_in", "rank_accuracy", "pointing_hit", "energy_pointing", "top_k", "pixel_auroc", "bbox_iou"):
        assert images[share].between(0, 1).all(), share
    assert (images["focus"] - images["mass_in"] / images["area"]).abs().max() < 1e-9

    subgroups = pd.read_csv(run / "subgroups.csv")
    assert set(subgroups["column"]) == {"site", "sex"}
    assert subgroups.groupby("column")["n"].sum().eq(24).all()
    assert (subgroups["mass_in_ci_low"] <= subgroups["mass_in_mean"]).all()
    assert (subgroups["mass_in_mean"] <= subgroups["mass_in_ci_high"]).all()
    for _, g in subgroups.iterrows():  # the disparity is the group's accuracy minus the rest's
        in_group = images[g["column"]].astype(str) == g["group"]
        expected = images.loc[in_group, "correct"].mean() - images.loc[~in_group, "correct"].mean()
        assert abs(g["accuracy_gap"] - expected) < 1e-9
        assert g["accuracy_gap_ci_low"] <= g["accuracy_gap"] <= g["accuracy_gap_ci_high"]

    html = (run / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "ghost" in html and "image_path: file not found" in html
    for meaning in MEANINGS.values():  # every metric is printed with its meaning (autoescaped text)
        assert meaning.split(" (")[0].replace("'", "&#39;") in html
    assert "Explanation sanity check" in html and "classifier.3" in html
    assert len(pd.read_csv(run / "work" / "sanity.csv")) > 5
    assert (run / "report.pdf").read_bytes()[:5] == b"%PDF-"
    info = pd.read_json(run / "run.json", typ="series")
    assert len(info["model_sha256"]) == 64 and info["versions"]["torch"]


def test_same_inputs_give_identical_numbers(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    from audit.pipeline import run_audit

    outputs = []
    for name in ("a", "b"):
        config = write_config(tmp_path / f"{name}.yaml", tiny_set, tiny_model, run_name=name)
        run_audit(config)
        run = tmp_path / "reports" / name
        outputs.append(((run / "images.parquet").read_bytes(), (run / "subgroups.csv").read_bytes()))
    assert outputs[0] == outputs[1]


def test_explaining_the_label_and_a_fixed_class(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    from audit.pipeline import run_audit

    for target in ("label", "melanoma"):
        config = write_config(tmp_path / f"{target}.yaml", tiny_set, tiny_model, run_name=target)
        config.write_text(config.read_text().replace("target_layer:", f"target: {target}\n  target_layer:"))
        run_audit(config)
        images = pd.read_parquet(tmp_path / "reports" / target / "images.parquet")
        expected = images["label"] if target == "label" else pd.Series(["melanoma"] * len(images))
        assert images["explained"].tolist() == expected.tolist()


def test_library_never_imports_prefect() -> None:
    code = (
        "import sys, audit.pipeline, audit.report, audit.examples.demo, audit.cam;"
        "sys.exit(1 if any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_torchscript_model_gives_the_same_audit(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    import torch

    from audit.models import build_torchvision
    from audit.pipeline import run_audit

    model = build_torchvision("mobilenet_v3_small", 2)
    model.load_state_dict(torch.load(tiny_model, weights_only=True))
    torch.jit.save(torch.jit.script(model.eval()), tmp_path / "model.ts")
    eager = write_config(tmp_path / "eager.yaml", tiny_set, tiny_model, run_name="eager")
    scripted = write_config(
        tmp_path / "ts.yaml",
        tiny_set,
        tmp_path / "model.ts",
        run_name="ts",
        **{"model.kind": "torchscript"},
    )
    run_audit(eager)
    run_audit(scripted)
    a = pd.read_parquet(tmp_path / "reports" / "eager" / "images.parquet")
    b = pd.read_parquet(tmp_path / "reports" / "ts" / "images.parquet")
    assert a["predicted"].tolist() == b["predicted"].tolist()
    pd.testing.assert_series_equal(a["mass_in"], b["mass_in"], atol=1e-5, rtol=1e-4)
    # the sanity check needs weights it can re-initialise: run for eager, said-why for TorchScript
    summaries = [json.loads((tmp_path / "reports" / r / "summary.json").read_text()) for r in ("eager", "ts")]
    assert len(summaries[0]["sanity"]["steps"]) > 5
    assert "torchscript" in summaries[1]["sanity"]["skipped"]
    assert any("sanity check not run" in c for c in summaries[1]["checks"])


def test_several_classes_get_a_macro_one_vs_rest_auroc(tiny_set: Path, tmp_path: Path) -> None:
    import torch

    from audit.models import build_torchvision
    from audit.pipeline import run_audit

    torch.manual_seed(3)
    torch.save(build_torchvision("mobilenet_v3_small", 3).state_dict(), tmp_path / "m3.pt")
    config = write_config(
        tmp_path / "c.yaml", tiny_set, tmp_path / "m3.pt",
        **{"model.num_classes": 3, "data.classes": ["nevus", "melanoma", "other"]},
    )  # fmt: skip
    result = run_audit(config)
    groups = pd.read_csv(result.run_dir / "subgroups.csv")
    assert "sensitivity" not in groups and groups["auroc"].between(0, 1).all()
    assert (groups["auroc_ci_low"] <= groups["auroc"]).all() and (groups["auroc"] <= groups["auroc_ci_high"]).all()
    assert "macro one-vs-rest" in (result.run_dir / "report.html").read_text()


def test_check_exit_codes(prefect_harness: None, tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    config = write_config(tmp_path / "c.yaml", tiny_set, tiny_model, run_name="gate")
    # a random model on 64 px images: the explained map is 4x4, coarser than min_map_size -> warn
    ok = runner.invoke(app, ["check", str(config)])
    assert ok.exit_code == 0, ok.output
    assert "verdict: WARN" in ok.output
    again = runner.invoke(app, ["check", str(config), "--strict"])  # the same run_name is never silently replaced
    assert again.exit_code == 2 and "already holds an audit run; pass --overwrite" in again.output
    assert runner.invoke(app, ["check", str(config), "--strict", "--overwrite"]).exit_code == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("run_name: gate", "run_name: gate\nbogus_key: 1"))
    broken = runner.invoke(app, ["check", str(bad)])
    assert broken.exit_code == 2 and "bogus_key: unknown key" in broken.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"data.classes": ["nevus", "melanoma", "eczema"]}, "data.classes: 3 names for a model with 2 outputs"),
        ({"data.classes": ["melanoma", "melanoma"]}, "data.classes: ['melanoma'] listed more than once"),
        ({"explain.target_layer": "features.99"}, "explain.target_layer: 'features.99'"),
        ({"preprocessing.size": [0, 0]}, "preprocessing.size.0: Input should be greater than 0"),
        ({"data.manifest": "nowhere.csv"}, "data.manifest:"),
    ],
)
def test_config_problems_are_one_message_before_any_image_is_read(
    tiny_set: Path, tiny_model: Path, tmp_path: Path, override: dict, message: str
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    config = write_config(tmp_path / "c.yaml", tiny_set, tiny_model, run_name="cfg", **override)
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "reports" / "cfg").exists()


def test_intersections_reference_group_and_bh(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    from audit.pipeline import run_audit

    config = write_config(
        tmp_path / "i.yaml", tiny_set, tiny_model, run_name="inter",
        **{"data.intersections": [["site", "sex"]], "stats.reference": "largest", "stats.correction": "bh",
           "thresholds.min_group_size": 2},
    )  # fmt: skip
    run = run_audit(config).run_dir
    table = pd.read_csv(run / "subgroups.csv")
    inter = table[table["column"] == "site×sex"]
    assert len(inter) >= 4 and inter["group"].str.contains("×").all()
    assert inter["n"].sum() == 24
    # exactly one reference (the largest group) per column, never tested against itself
    refs = table[table["status"] == "reference"]
    assert sorted(refs["column"]) == sorted(table["column"].unique())
    assert refs["p_adjusted_min"].isna().all()
    tests = pd.read_csv(run / "disparities.csv")
    assert set(zip(tests["column"], tests["group"], strict=True)).isdisjoint(
        zip(refs["column"], refs["group"], strict=True)
    )
    tested = table[~table["status"].isin(["reference", "too small to judge"])]
    assert (tested["reference"] != tested["group"]).all()
    assert {"sensitivity", "specificity", "auroc", "flagged_correct_share", "focus_median"} <= set(table)

    # a flagged intersection gets its example cases (its column is saved with the images)
    from audit.config import load_config
    from audit.gallery import select_cases

    images = pd.read_parquet(run / "images.parquet")
    assert "site×sex" in images
    flagged = inter.head(1).assign(status="relies on outside evidence")
    sections = select_cases(load_config(config), images, flagged)
    assert sections[0]["title"].startswith("Flagged cases, worst first")
    assert sections[1]["title"].startswith(f"site×sex = {flagged['group'].iloc[0]}")
    assert len(sections[1]["rows"]) == min(12, int(flagged["n_judged"].iloc[0]))


def test_rows_without_a_mask_count_for_performance_only(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    from audit.pipeline import run_audit

    root = tmp_path / "set"
    shutil.copytree(tiny_set.parent, root)
    df = pd.read_csv(root / "manifest.csv")
    df.loc[:2, "mask_path"] = ""
    df.to_csv(root / "manifest.csv", index=False)
    config = write_config(
        tmp_path / "nm.yaml", root / "manifest.csv", tiny_model, run_name="nm", **{"sanity.enabled": False}
    )
    run = run_audit(config).run_dir
    images = pd.read_parquet(run / "images.parquet")
    assert len(images) == 24 and len(pd.read_csv(run / "exclusions.csv")) == 0
    no_mask = images[~images["localised"]]
    assert no_mask["row"].tolist() == [1, 2, 3] and no_mask["localisation_note"].str.contains("no mask").all()
    assert no_mask[["mass_in", "focus", "outside_delta"]].isna().all().all() and not no_mask["flagged"].any()
    assert images["correct"].notna().all() and images.loc[images["localised"], "focus"].notna().all()
    table = pd.read_csv(run / "subgroups.csv")
    assert (table.groupby("column")["n"].sum() == 24).all() and (
        table.groupby("column")["n_localised"].sum() == 21
    ).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["performance_only"] == 3 and summary["overall"]["mass_in"]["n"] == 21
    assert "Audited for performance only" in (run / "report.html").read_text()
