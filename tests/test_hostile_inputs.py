"""Hostile manifests, fuzzed: good rows mixed with every kind of bad input (hypothesis draws the mix).

Asserted for every draw: no crash; every row read is audited or excluded (nothing silently lost);
each bad row is excluded with the reason its kind calls for; every good row is audited with exactly
the numbers it gets among good rows only; no file outside the data root is opened; no pickle runs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.config import load_config
from audit.examples.hostile import BAD, GOOD, KINDS, build_hostile_set
from audit.pipeline import explain_shard, prepare, shard_output
from tests.conftest import write_config

OPENED: list[str] = []
WATCHING: list[Path] = []


def _audit_hook(event: str, args: tuple) -> None:
    if event == "open" and WATCHING and isinstance(args[0], str | Path):
        OPENED.append(str(args[0]))


sys.addaudithook(_audit_hook)  # cheap when nothing is watched; hooks cannot be removed


def audit_rows(base: Path, kinds: list[str], model: Path, fmt: str = "parquet") -> tuple:
    """Build the set, run prepare and explain (the stages that read inputs); return what they wrote."""
    hs = build_hostile_set(base, kinds, fmt=fmt)
    config = write_config(
        base / "c.yaml",
        hs.manifest,
        model,
        run_name="h",
        **{"data.subgroups": ["site", "sex"], "explain.shard_size": 7},
    )
    cfg = load_config(config)
    WATCHING.append(hs.outside)
    OPENED.clear()
    try:
        shards = prepare(cfg)
        results = [explain_shard(cfg, s) for s in shards]
    finally:
        WATCHING.clear()
    work = cfg.run_dir / "work"
    images = pd.concat([pd.read_parquet(r) for r in results], ignore_index=True) if results else pd.DataFrame()
    exclusions = pd.concat(
        [pd.read_csv(work / "exclusions_manifest.csv", keep_default_na=False)]
        + [pd.read_csv(shard_output(s, "exclusions.csv"), keep_default_na=False) for s in shards],
        ignore_index=True,
    )
    outside_reads = [p for p in OPENED if p.startswith(str(hs.outside.resolve())) or p.startswith(str(hs.outside))]
    return hs, images, exclusions, outside_reads


@pytest.fixture(scope="module")
def baseline(tiny_model: Path) -> pd.DataFrame:
    """Every good kind for every pool image, audited among good rows only: the numbers to keep."""
    with tempfile.TemporaryDirectory() as tmp:
        kinds = [k for k in GOOD for _ in range(6)]
        hs, images, exclusions, _ = audit_rows(Path(tmp), kinds, tiny_model)
    assert exclusions.empty
    keyed = images.merge(hs.expected[["image_id", "key"]], on="image_id")
    return keyed.drop_duplicates("key").set_index("key")


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.sampled_from(GOOD),
    rest=st.lists(st.sampled_from(KINDS), min_size=3, max_size=16),
    fmt=st.sampled_from(["parquet", "jsonl", "csv"]),
)
def test_hostile_rows_never_crash_lose_rows_or_leak(
    tiny_model: Path, baseline: pd.DataFrame, first: str, rest: list[str], fmt: str
) -> None:
    kinds = [first, *rest]
    with tempfile.TemporaryDirectory() as tmp:
        hs, images, exclusions, outside_reads = audit_rows(Path(tmp), kinds, tiny_model, fmt)
        payload_ran = hs.marker.exists()
    expected = hs.expected
    assert len(images) + len(exclusions) == len(kinds)  # nothing silently lost
    assert sorted(images["row"].tolist() + exclusions["row"].tolist()) == list(range(1, len(kinds) + 1))
    assert not outside_reads and not payload_ran
    reasons = exclusions.set_index("row")["reason"]
    for _, e in expected.iterrows():
        if e["kind"] in BAD:
            assert e["row"] in reasons.index, f"{e['kind']} row was audited"
            assert e["phrase"] in reasons[e["row"]], (e["kind"], reasons[e["row"]])
    good = images.merge(expected[["row", "key"]], on="row")
    assert len(good) == sum(k in GOOD for k in kinds)
    for col in ("explained_probability", "mass_in", "focus", "outside_delta"):
        mine = good[col].to_numpy(float)
        theirs = baseline.loc[good["key"], col].to_numpy(float)
        # the bad rows change nothing about the good ones (rows without a mask: NaN localisation, both times)
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=0, equal_nan=True, err_msg=col)
    no_mask = good["key"].str.startswith("good_no_mask")
    assert good.loc[no_mask, "mass_in"].isna().all() and not good.loc[no_mask, "localised"].any()
    assert good.loc[~no_mask, "mass_in"].notna().all() and good.loc[~no_mask, "localised"].all()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_rows_past_the_limits_are_excluded_and_odd_but_valid_rows_audited(
    tiny_model: Path, baseline: pd.DataFrame, tmp_path: Path, fmt: str
) -> None:
    """A cell past the csv module's own limit, huge names and images just under Pillow's bomb limit are
    each their row's exclusion; a 1-bit mask gives the same numbers as its 8-bit original."""
    limits = ["long_group", "long_id", "many_pixels", "many_pixels_dicom", "many_pixels_mask"]
    kinds = ["good", *limits, "good_1bit_mask", "good_rtl_group", "good_cjk_group"]
    hs, images, exclusions, _ = audit_rows(tmp_path, kinds, tiny_model, fmt)
    reasons = exclusions.set_index("row")["reason"]
    for _, e in hs.expected.iterrows():
        if e["kind"] in limits:
            assert e["phrase"] in reasons[e["row"]], (e["kind"], reasons[e["row"]])
    assert exclusions["image_id"].str.len().max() < 300  # the 200,000-character id is quoted, not copied
    one_bit = images.merge(hs.expected[hs.expected["kind"] == "good_1bit_mask"][["row", "key"]], on="row")
    assert len(one_bit) == 1 and one_bit["mass_in"].iloc[0] > 0
    assert one_bit["mass_in"].iloc[0] == pytest.approx(baseline.loc[one_bit["key"].iloc[0], "mass_in"], abs=1e-6)
    assert len(images) == 4 and len(exclusions) == len(limits)


def test_the_outside_read_detector_detects(tmp_path: Path) -> None:
    """Negative control: the audit hook does see a read of the watched folder."""
    (tmp_path / "secret.txt").write_text("x")
    WATCHING.append(tmp_path)
    OPENED.clear()
    try:
        (tmp_path / "secret.txt").read_bytes()
    finally:
        WATCHING.clear()
    assert any(p.endswith("secret.txt") for p in OPENED)
