"""`audit init`: a starter config from the manifest and the model, checked, that `audit run` accepts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from typer.testing import CliRunner

from audit.starter import guess_columns
from flows.cli import app


def init(manifest: Path, model: Path, out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(app, ["init", str(manifest), "--model", str(model), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert "checked as `audit run` would" in result.output
    return yaml.safe_load(out.read_text())


def test_the_guesses_on_a_manifest_with_other_names(tiny_set: Path, tmp_path: Path) -> None:
    df = pd.read_csv(tiny_set).rename(columns={"image_path": "file", "label": "dx", "image_id": "isic_id"})
    df["age"] = [20 + 3 * i for i in range(len(df))]  # many values: banded
    df["note"] = [f"free text {i}" for i in range(len(df))]  # one per row: not a subgroup
    manifest = tiny_set.parent / "renamed.csv"
    df.to_csv(manifest, index=False)
    guess = guess_columns(manifest)
    assert guess.columns["image_path"] == "file" and guess.columns["label"] == "dx"
    assert guess.columns["image_id"] == "isic_id" and guess.columns["mask_path"] == "mask_path"
    assert {"site", "sex", "age"} <= set(guess.subgroups) and "note" not in guess.subgroups
    assert guess.bins["age"] == [0, 40, 65, 75, 120] and guess.classes == ["melanoma", "nevus"]


def test_the_written_config_is_checked_and_names_its_guesses(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.yaml"
    written = init(tiny_set, tiny_model, out, "--arch", "mobilenet_v3_small", "--run-name", "started")
    assert written["model"]["kind"] == "torchvision" and written["model"]["num_classes"] == 2
    text = out.read_text()
    assert text.startswith("# Starter config") and "list them in the order of the model's outputs" in text
    # `audit init` itself ran the check `audit run` starts with (config, model, every row's headers); the
    # full run of an unchanged starter config is tests/test_dicom_audit.py's (the slow part, done once)
    assert "24 to audit, 0 excluded" in CliRunner().invoke(app, ["init", str(tiny_set), "--model", str(tiny_model),
                                                                 "--arch", "mobilenet_v3_small", "--out",
                                                                 str(tmp_path / "b.yaml")]).output  # fmt: skip
    again = CliRunner().invoke(app, ["init", str(tiny_set), "--model", str(tiny_model), "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output  # never overwritten silently


def test_a_state_dict_without_its_architecture_is_one_line(tiny_set: Path, tiny_model: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["init", str(tiny_set), "--model", str(tiny_model), "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--arch" in result.output and not (tmp_path / "a").exists()
