"""The bundled example: a generated dermoscopy-like audit set with a planted shortcut, and its model.

``prepare_demo`` generates the data on first use (cached under ``.cache/``) and writes the audit config
the demo runs. The two models ship with the package (``audit/examples/weights``, half-precision state
dicts with their SHA-256 and the data they were trained on): CPU training is not bit-identical across
processors, and the demo must print the same numbers on every machine. ``python -m
audit.examples.demo`` trains them again (deterministically on one machine) and rewrites that folder; a
shipped model whose training data no longer match the generator is not used, and the model is trained
locally instead. The planted story: in ``site_c`` clinicians mark
melanomas with purple ink before excision, so in the training split ink appears on 95% of site-C
melanomas and on no nevus. The audit split is a later sample from site C in which ink also appears on
half of the nevi (marking practice changed), which is where relying on ink goes wrong. Each audit image
also has a counterfactual rendering without the ink, which proves whether the model relies on it.

The *clean twin* is the control: the same training images, except that in site C the ink was drawn
independently of the label (on half of each class), so the ink carries no information and a model has
no reason to use it. Audited on the same audit set, it should pass where the planted model fails.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import yaml

from audit.examples.synth import CLASSES, ShortcutSpec, generate
from audit.examples.train import train_classifier

VERSION = "v1"  # bump when the generator or training changes, so caches are rebuilt
TRAIN = {"n": 1500, "seed": 11, "spec": ShortcutSpec(p_artifact_if_melanoma=0.95, p_artifact_if_nevus=0.0)}
TRAIN_CLEAN = {"n": 1500, "seed": 11, "spec": ShortcutSpec(p_artifact_if_melanoma=0.5, p_artifact_if_nevus=0.5)}
AUDIT = {"n": 360, "seed": 22, "spec": ShortcutSpec(p_artifact_if_melanoma=0.9, p_artifact_if_nevus=0.5)}
SIZE = 128


WEIGHTS = Path(__file__).resolve().parent / "weights"  # the shipped models and weights.json


def _key(params: dict) -> str:
    """What a split's images depend on (a model trained on them is valid while this holds)."""
    return json.dumps({"n": params["n"], "seed": params["seed"], "spec": vars(params["spec"]), "size": SIZE})


def shipped_model(twin: str) -> Path | None:
    """The shipped model of ``twin`` when it was trained on the data the generator makes now and its
    bytes are the recorded ones; else None."""
    params = TWINS[twin][1]
    try:
        entry = json.loads((WEIGHTS / "weights.json").read_text())[twin]
    except (OSError, ValueError, KeyError):
        return None
    path = WEIGHTS / entry["file"]
    if entry.get("trained_on") != _key(params) or entry.get("version") != VERSION or not path.is_file():
        return None
    return path if hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"] else None


def _split(root: Path, name: str, params: dict, workers: int) -> Path:
    folder = root / name
    manifest = folder / "manifest.csv"
    stamp = folder / "params.json"
    key = _key(params)
    if not (manifest.is_file() and stamp.is_file() and stamp.read_text() == key):
        print(f"generating {params['n']} {name} images under {folder} ...", flush=True)
        generate(folder, params["n"], params["seed"], SIZE, params["spec"], workers=workers)
        stamp.write_text(key)
    return manifest


TWINS = {
    "planted": ("train", TRAIN, "model.pt", "demo"),
    "clean": ("train_clean", TRAIN_CLEAN, "model_clean.pt", "demo-clean"),
}


def prepare_demo(
    cache: Path = Path(".cache/demo"), reports: Path = Path("reports"), workers: int = 2, twin: str = "planted"
) -> Path:
    """Generate, train if needed, and write the audit config of the ``planted`` model or its ``clean``
    twin (same audit set); returns the config path."""
    split, params, model_name, run_name = TWINS[twin]
    root = cache.resolve() / VERSION
    audit_manifest = _split(root, "audit", AUDIT, workers)
    model = shipped_model(twin) or root / model_name
    if not model.is_file():
        train_manifest = _split(root, split, params, workers)
        print(f"training mobilenet_v3_small on {params['n']} {split} images (no shipped model matches) ...",
              flush=True)  # fmt: skip
        train_classifier(train_manifest, model, CLASSES)
    config = {
        "run_name": run_name,
        "output_dir": str(reports.resolve()),
        "model": {"kind": "torchvision", "arch": "mobilenet_v3_small", "checkpoint": str(model), "num_classes": 2},
        "preprocessing": {
            "size": [SIZE, SIZE],
            "channels": 3,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "explain": {
            "method": "gradcam",
            "target": "predicted",
            "target_layer": "features.8",
            "batch_size": 32,
            "shard_size": 120,
        },
        "data": {"manifest": str(audit_manifest), "classes": list(CLASSES), "subgroups": ["site", "sex", "age_band"]},
        "thresholds": {"focus": 1.0, "min_group_size": 10, "min_map_size": 7},
        "stats": {"n_boot": 2000, "seed": 0},
    }
    path = root / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def ship_weights(cache: Path = Path(".cache/demo"), workers: int = 2) -> None:
    """Train both models and write them to ``WEIGHTS`` (half precision: a third of a full checkpoint's
    size, and the shipped file is the model the demo audits) with ``weights.json``."""
    WEIGHTS.mkdir(exist_ok=True)
    entries = {}
    for twin, (split, params, model_name, _) in TWINS.items():
        trained = cache.resolve() / "ship" / model_name
        trained.parent.mkdir(parents=True, exist_ok=True)
        train_classifier(_split(cache.resolve() / "ship", split, params, workers), trained, CLASSES)
        state = torch.load(trained, weights_only=True)
        out = WEIGHTS / f"demo-{twin}.pt"
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, out)
        entries[twin] = {"file": out.name, "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
                         "trained_on": _key(params), "version": VERSION, "torch": torch.__version__,
                         "arch": "mobilenet_v3_small", "classes": list(CLASSES)}  # fmt: skip
    (WEIGHTS / "weights.json").write_text(json.dumps(entries, indent=1) + "\n")


if __name__ == "__main__":
    ship_weights()
