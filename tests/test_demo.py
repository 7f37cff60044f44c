"""The bundled example: deterministic generation, and the audit finds the planted site and only it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.examples.synth import ShortcutSpec, generate, render

REPO = Path(__file__).resolve().parents[1]


def test_generation_is_deterministic_and_independent_of_workers(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", 6, seed=3, size=48, workers=1)
    b = generate(tmp_path / "b", 6, seed=3, size=48, workers=2)
    assert a.equals(b)
    for p in a["image_path"]:
        assert (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes()


def test_counterfactual_differs_only_under_the_artifact() -> None:
    r = render(seed=1, index=4, size=96, melanoma=True, with_artifact=True)
    diff = np.abs(r["image"].astype(int) - r["counterfactual"].astype(int)).sum(axis=2) > 0
    assert diff.any() and r["artifact_mask"].any()
    assert not (diff & r["lesion_mask"]).any(), "the artifact must never touch the lesion"
    # outside a slightly grown artifact mask the two renderings are identical
    from scipy import ndimage

    assert not (diff & ~ndimage.binary_dilation(r["artifact_mask"], iterations=3)).any()


@pytest.mark.parametrize("artifact", ["ink", "ruler", "text", "vignette", "circle"])
@pytest.mark.parametrize("acquisition", [None, "blur", "cast"])
def test_every_artifact_stays_off_the_lesion_and_is_all_the_counterfactual_removes(
    artifact: str, acquisition: str | None
) -> None:
    from scipy import ndimage

    r = render(seed=2, index=7, size=96, melanoma=False, with_artifact=True, artifact=artifact, tone="dark",
               acquisition=acquisition)  # fmt: skip
    assert r["artifact_mask"].any() and not (r["artifact_mask"] & r["lesion_mask"]).any()
    diff = np.abs(r["image"].astype(int) - r["counterfactual"].astype(int)).sum(axis=2) > 3  # rounding of soft edges
    grown = ndimage.binary_dilation(r["artifact_mask"], iterations=8 if acquisition == "blur" else 3)
    assert diff.any() and not (diff & ~grown).any()
    unmarked = render(seed=2, index=7, size=96, melanoma=False, with_artifact=False, artifact=artifact, tone="dark",
                      acquisition=acquisition)  # fmt: skip
    assert (unmarked["image"] == r["counterfactual"]).all() and not unmarked["artifact_mask"].any()


@pytest.mark.parametrize("artifact", ["marker", "text"])
def test_radiographs_keep_their_artifact_outside_the_body_and_the_lungs(artifact: str) -> None:
    from scipy import ndimage

    from audit.examples.synth import render_radiograph

    r = render_radiograph(seed=3, index=2, size=96, positive=True, with_artifact=True, artifact=artifact,
                          acquisition="contrast")  # fmt: skip
    assert r["image"].shape == (96, 96, 3) and (r["image"][..., 0] == r["image"][..., 2]).all()  # grayscale
    lungs = r["lesion_mask"]
    assert 0.15 < lungs.mean() < 0.4 and r["artifact_mask"].any() and not (r["artifact_mask"] & lungs).any()
    diff = np.abs(r["image"].astype(int) - r["counterfactual"].astype(int)).sum(axis=2) > 3
    assert diff.any() and not (diff & ~ndimage.binary_dilation(r["artifact_mask"], iterations=2)).any()


def test_a_world_can_correlate_skin_tone_with_a_site(tmp_path: Path) -> None:
    from audit.examples.synth import World

    world = World("ruler", site_weights=(0.5, 0.3, 0.2), skin_tone=(0.6, 0.3, 0.1), tone_in_site=("site_c", (0, 0, 1)))
    m = generate(tmp_path, 60, seed=4, size=32, world=world, write_masks=False)
    assert (m.loc[m["site"] == "site_c", "skin_tone"] == "dark").all()
    assert (m.loc[m["site"] != "site_c", "skin_tone"] != "dark").mean() > 0.7
    assert m["site"].value_counts()["site_a"] > m["site"].value_counts()["site_c"]
    with pytest.raises(ValueError, match="artifact"):
        World("sticker")


def test_shortcut_spec_controls_where_ink_appears(tmp_path: Path) -> None:
    m = generate(
        tmp_path, 60, seed=9, size=32, shortcut=ShortcutSpec(p_artifact_if_melanoma=1.0, p_artifact_if_nevus=0.0)
    )
    assert not m.loc[m["site"] != "site_c", "has_artifact"].any()
    c = m[m["site"] == "site_c"]
    assert (c["has_artifact"] == (c["label"] == "melanoma")).all()
    mask = np.asarray(Image.open(tmp_path / c[c["has_artifact"]]["artifact_mask_path"].iloc[0]))
    assert mask.max() == 255


@pytest.mark.slow
def test_demo_flags_the_planted_site_only(prefect_harness: None, tmp_path: Path) -> None:
    """Trains the demo model on first use (about 2 minutes; cached in .cache/demo like `make demo`)."""
    from audit.examples.demo import prepare_demo
    from audit.examples.evidence import counterfactual_table
    from audit.pipeline import run_audit

    config = prepare_demo(REPO / ".cache" / "demo", tmp_path / "reports")
    result = run_audit(config)
    assert result.verdict == "fail"
    subgroups = pd.read_csv(result.run_dir / "subgroups.csv")
    failed = subgroups[subgroups["status"] == "relies on outside evidence"]
    assert list(zip(failed["column"], failed["group"], strict=True)) == [("site", "site_c")]
    assert (subgroups.drop(failed.index)["status"].isin(["ok", "reference"])).all()
    # judged per explained class: the melanoma maps of site C look away from the lesion
    tests = pd.read_csv(result.run_dir / "disparities.csv")
    site_c = tests[(tests["group"] == "site_c")].set_index(["test", "explained"])
    assert site_c.loc[("focus", "melanoma"), "significant"]
    assert site_c.loc[("reliance", "(all, stratified)"), "group_value"] > 0.3

    # the counterfactual proves the reliance: removing only the ink changes site C's predictions
    cf = counterfactual_table(pd.read_parquet(result.run_dir / "images.parquet"))
    inked = cf.loc[("site_c", True)]
    assert inked["p_with"] - inked["p_without"] > 0.3
    assert inked["prediction_changes"] > 0.3
    clean = cf.drop(index=("site_c", True))
    assert (clean["prediction_changes"] == 0).all() and (clean["p_with"] == clean["p_without"]).all()

    # the generic counterfactual test finds the images whose prediction truly depends on the ink
    from audit.examples.evidence import detection_auroc

    found = detection_auroc(pd.read_parquet(result.run_dir / "images.parquet"))
    assert found["artifact neutralised (Δp)"] > 0.9
    assert found["outside of mask neutralised (Δp)"] > 0.75
    assert found["low Grad-CAM focus"] < found["outside of mask neutralised (Δp)"]  # a map is weaker evidence

    # as a release gate the same audit exits 1 (fail)
    from typer.testing import CliRunner

    from flows.cli import app

    gate = CliRunner().invoke(app, ["check", str(config), "--overwrite"])  # the run above holds run_name
    assert gate.exit_code == 1, gate.output
    assert "site = site_c" in gate.output


@pytest.mark.slow
def test_clean_twin_passes_on_the_same_audit_set(prefect_harness: None, tmp_path: Path) -> None:
    """The control: trained where the ink says nothing about the label, the model is not flagged
    anywhere, and removing the ink changes no prediction. (Trains the twin on first use.)"""
    from audit.examples.demo import prepare_demo
    from audit.pipeline import run_audit

    result = run_audit(prepare_demo(REPO / ".cache" / "demo", tmp_path / "reports", twin="clean"))
    assert result.verdict == "pass"
    subgroups = pd.read_csv(result.run_dir / "subgroups.csv")
    assert (subgroups["status"] == "ok").all()
    site_c = subgroups[(subgroups["column"] == "site") & (subgroups["group"] == "site_c")].iloc[0]
    assert site_c["p_adjusted_min"] > 0.5 and site_c["outside_dependent_share"] < 0.05
    images = pd.read_parquet(result.run_dir / "images.parquet")
    # CPU training differs across processors: a borderline prediction may flip; a shortcut flips many
    assert images["counterfactual_flips"].mean() < 0.02


@pytest.mark.slow
def test_sanity_check_separates_a_model_blind_method_from_grad_cam(tmp_path: Path) -> None:
    """Calibration on the demo model: guided backprop's maps survive randomising the top of the
    network (Adebayo et al. 2018), Grad-CAM's do not; the configured limit sits between them."""
    import yaml

    from audit.config import load_config
    from audit.examples.demo import prepare_demo
    from audit.pipeline import _sanity_result, prepare, sanity_check

    config = prepare_demo(REPO / ".cache" / "demo", tmp_path / "reports")
    raw = yaml.safe_load(config.read_text())
    found = {}
    for method in ("gradcam", "guided-backprop"):
        raw["explain"]["method"] = method
        raw["run_name"] = f"sanity-{method}"
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump(raw))
        cfg = load_config(path)
        prepare(cfg)
        sanity_check(cfg)
        found[method] = _sanity_result(cfg)
    top = {m: max(s["spearman"] for s in r["steps"][:2]) for m, r in found.items()}
    assert top["gradcam"] < 0.3 and found["gradcam"]["warning"] is None
    assert top["guided-backprop"] > 0.7 and "not evidence about this model" in found["guided-backprop"]["warning"]
