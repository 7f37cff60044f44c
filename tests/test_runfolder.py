"""A run folder has one owner: --overwrite removes what the audit wrote and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.runfolder import MARKER, RunFolder, RunFolderError


def _finished_run(path: Path) -> RunFolder:
    """A folder as a finished run leaves it: outputs, work files, gallery images, written.json."""
    folder = RunFolder(path)
    folder.claim(overwrite=False)
    for f in (folder.images, folder.summary, folder.info, folder.html):
        f.write_text("x")
    (folder.work / "shard_0000.parquet").write_text("x")
    (folder.work / "shard_0000.result.parquet").write_text("x")
    folder.cases.mkdir()
    folder.case_image(7).write_text("x")
    folder.record_written()
    return folder


def test_overwrite_removes_only_what_the_run_wrote(tmp_path: Path) -> None:
    folder = _finished_run(tmp_path / "run")
    listed = json.loads(folder.written.read_text())["files"]
    assert "cases/row_000007.jpg" in listed and "work/shard_0000.parquet" in listed and "run.json" in listed
    foreign = ["notes.txt", "cases/annotated_by_hand.png", "work/my_analysis.ipynb", "work/shard_0000.backup"]
    for rel in foreign:
        (folder.path / rel).write_text("mine")
    assert folder.foreign_files() == sorted(foreign)
    with pytest.raises(RunFolderError, match="pass --overwrite"):
        folder.claim(overwrite=False)
    kept = folder.claim(overwrite=True)
    assert kept == sorted(foreign)
    for rel in foreign:
        assert (folder.path / rel).read_text() == "mine"
    for f in (folder.images, folder.summary, folder.info, folder.html, folder.case_image(7), folder.written):
        assert not f.exists()
    assert not (folder.work / "shard_0000.parquet").exists()
    # the next run lists only its own files, so the hand-made ones survive the overwrite after it too
    folder.summary.write_text("y")
    folder.record_written()
    assert not set(json.loads(folder.written.read_text())["files"]) & set(foreign)


def test_a_killed_run_is_cleared_of_its_stages_files_only(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.claim(overwrite=False)
    (folder.work / "shard_0003.maps.npz").write_text("x")
    (folder.work / "readme.md").write_text("mine")
    kept = folder.claim(overwrite=False)  # unfinished (no run.json): resumed without --overwrite
    assert kept == ["work/readme.md"] and (folder.work / "readme.md").read_text() == "mine"
    assert not (folder.work / "shard_0003.maps.npz").exists()


@pytest.mark.parametrize("stray", ["run.json", "summary.json"])
def test_a_folder_without_the_marker_is_never_cleared(tmp_path: Path, stray: str) -> None:
    path = tmp_path / "looks_like_a_run"
    path.mkdir()
    (path / stray).write_text("{}")
    folder = RunFolder(path)
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match=f"no {MARKER} marker"):
            folder.claim(overwrite=overwrite)
    assert (path / stray).read_text() == "{}" and sorted(p.name for p in path.iterdir()) == [stray]


def test_a_listed_path_that_leads_outside_the_folder_is_not_removed(tmp_path: Path) -> None:
    folder = _finished_run(tmp_path / "run")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    folder.written.write_text(json.dumps({"files": ["../precious.txt", "summary.json"]}))
    folder.claim(overwrite=True)
    assert outside.read_text() == "keep" and not folder.summary.exists()
