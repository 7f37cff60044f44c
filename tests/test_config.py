"""Config errors name the key; paths resolve against the config file's folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from audit.config import ConfigError, load_config

BASE = {
    "run_name": "r1",
    "model": {"arch": "resnet18", "checkpoint": "m.pt", "num_classes": 2},
    "data": {"manifest": "data/manifest.csv", "classes": ["a", "b"]},
}


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "audit.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _with(**changes: object) -> dict:
    cfg = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def test_valid_config_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, BASE))
    assert cfg.model.checkpoint == (tmp_path / "m.pt").resolve()
    assert cfg.data.manifest == (tmp_path / "data" / "manifest.csv").resolve()
    assert cfg.run_dir == (tmp_path / "reports" / "r1").resolve()
    assert cfg.explain.target == "predicted" and cfg.explain.target_layer == "auto"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"thresholds": {"treshold": 1}}, "thresholds.treshold: unknown key"),
        ({"explain": {"batch_size": "many"}}, "explain.batch_size"),
        ({"explain": {"batch_size": 0}}, "explain.batch_size"),
        ({"model__arch": None}, "model.arch is required"),
        ({"model__kind": "pickle"}, "model.kind"),
        ({"preprocessing": {"channels": 1}}, "preprocessing.mean needs 1 values"),
        ({"explain": {"target": "melanoma"}}, "explain.target: 'melanoma'"),
        ({"run_name": "../escape"}, "run_name"),
        ({"data__classes": ["only"]}, "data.classes"),
        ({"model": {"kind": "onnx"}}, "model.checkpoint is required when model.kind is 'onnx'"),
        ({"model": {"kind": "factory", "factory": "nofunction.py"}}, "model.factory must be"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, changes: dict, message: str) -> None:
    data = _with(**{k: v for k, v in changes.items() if "__" in k})
    data.update({k: v for k, v in changes.items() if "__" not in k})
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, data))
    assert message in str(err.value)
    assert "audit.yaml" in str(err.value)


def test_missing_required_key(tmp_path: Path) -> None:
    data = _with()
    del data["data"]
    with pytest.raises(ConfigError, match="data: Field required"):
        load_config(_write(tmp_path, data))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_factory_path_resolves_against_the_config(tmp_path: Path) -> None:
    data = _with()
    data["model"] = {"kind": "factory", "factory": "models/net.py:build"}
    cfg = load_config(_write(tmp_path, data))
    assert cfg.model.factory == f"{(tmp_path / 'models' / 'net.py').resolve()}:build"
    assert cfg.model.identity_file == (tmp_path / "models" / "net.py").resolve()


def test_a_module_factory_is_identified_by_its_source_file(tmp_path: Path) -> None:
    import json.decoder

    data = _with()
    data["model"] = {"kind": "factory", "factory": "json.decoder:JSONDecoder"}
    cfg = load_config(_write(tmp_path, data))
    assert cfg.model.identity_file == Path(json.decoder.__file__)
    assert cfg.model.identity_file.is_file()


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested"),  # the YAML parser's own recursion
        ("a:\n" + "".join(" " * (2 * k) + f"k{k}:\n" for k in range(1, 200)) + " " * 400 + "v: 1\n", "nested"),
        (ALIAS_BOMB, "more than 100000 values"),  # a billion values in 800 bytes
        ("run_name: " + "x" * 1_100_000 + "\n", "a few kilobytes"),
        (b"run_name: caf\xe9\n", "not UTF-8"),
        ("run_name: [1, 2]\nmodel: 7\n", "run_name"),  # wrong types: pydantic names the key
    ],
)
def test_every_kind_of_broken_config_is_one_config_error(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "c.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_no_command_prints_a_traceback(tmp_path: Path) -> None:
    """Through the real entry point: a broken config is exit 2 and one line (``check``, which shares
    ``run``'s start); so is a run folder whose files are corrupt (an error no command expected)."""
    import subprocess
    import sys

    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000)
    corrupt = tmp_path / "run"
    corrupt.mkdir()
    for name in ("images.parquet", "subgroups.csv", "exclusions.csv", "summary.json", "run.json"):
        (corrupt / name).write_text("not what it should be")
    (corrupt / "config.json").write_text("{")
    for args in (["check", str(deep)], ["report", str(corrupt)]):
        done = subprocess.run([sys.executable, "-c", "from flows.cli import app; app()", *args], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
