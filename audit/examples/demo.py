"""The bundled example: a generated dermoscopy-like audit set with a planted shortcut, and its model.

``prepare_demo`` generates the data and trains the model on first use (cached under ``.cache/``),
then writes the audit config the demo runs. The planted story: in ``site_c`` clinicians mark
melanomas with purple ink before excision, so in the training split ink appears on 95% of site-C
melanomas and on no nevus. The audit split is a later sample from site C in which ink also appears on
half of the nevi (marking practice changed), which is where relying on ink goes wrong. Each audit image
also has a counterfactual rendering without the ink, which proves whether the model relies on it.

The *clean twin* is the control: the same training images, except that in site C the ink was drawn
independently of the label (on half of each class), so the ink carries no information and a model has
no reason to use it. Audited on the same audit set, it should pass where the planted model fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from audit.examples.synth import CLASSES, ShortcutSpec, generate
from audit.examples.train import train_classifier

VERSION = "v1"  # bump when the generator or training changes, so caches are rebuilt
TRAIN = {"n": 1500, "seed": 11, "spec": ShortcutSpec(p_artifact_if_melanoma=0.95, p_artifact_if_nevus=0.0)}
TRAIN_CLEAN = {"n": 1500, "seed": 11, "spec": ShortcutSpec(p_artifact_if_melanoma=0.5, p_artifact_if_nevus=0.5)}
AUDIT = {"n": 360, "seed": 22, "spec": ShortcutSpec(p_artifact_if_melanoma=0.9, p_artifact_if_nevus=0.5)}
SIZE = 128


def _split(root: Path, name: str, params: dict, workers: int) -> Path:
    folder = root / name
    manifest = folder / "manifest.csv"
    stamp = folder / "params.json"
    key = json.dumps({"n": params["n"], "seed": params["seed"], "spec": vars(params["spec"]), "size": SIZE})
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
    train_manifest = _split(root, split, params, workers)
    audit_manifest = _split(root, "audit", AUDIT, workers)
    model = root / model_name
    if not model.is_file():
        print(f"training mobilenet_v3_small on {params['n']} {split} images (first run only) ...", flush=True)
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
