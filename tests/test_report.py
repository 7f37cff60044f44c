"""The compliance packet, read back as a reviewer would: sections, attachments, PDF/A, escaping,
identical bytes on re-rendering, and re-rendering from the run folder alone."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from pypdf import PdfReader

from audit.pipeline import run_audit
from audit.report import render_report
from tests.conftest import write_config

SECTIONS = (
    "Executive summary", "Intended use, population and audit set", "Subgroup definitions",
    "Subgroups: attention and reliance", "Localisation per subgroup and intersection", "Performance by subgroup",
    "Right for the wrong reason", "Counterfactual confirmation", "Shortcut discovery without annotations",
    "Flagged cases", "Explanation sanity check",
    "Methods", "Limitations", "Exclusions", "Reproducibility", "Sign-off",
)  # fmt: skip
HOSTILE_CLASSES = ["nevus</table>", "<script>alert(2)</script>"]
RTL_SITE = "site \u202eevil\u202c a"  # a right-to-left override inside a group name
CJK_SITE = "病院 🏥"
LONG_SITE = "s" * 500


@pytest.fixture(scope="module")
def packet(tiny_set: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run on a copy of the tiny set whose class names are hostile markup; the copy of the
    images is deleted afterwards, so only the run folder remains."""
    tmp = tmp_path_factory.mktemp("packet")
    root = tmp / "set"
    shutil.copytree(tiny_set.parent, root)
    df = pd.read_csv(root / "manifest.csv")
    df["label"] = df["label"].map({"nevus": HOSTILE_CLASSES[0], "melanoma": HOSTILE_CLASSES[1]})
    df["site"] = df["site"].map({"site_a": RTL_SITE, "site_b": CJK_SITE, "site_c": LONG_SITE})
    df.to_csv(root / "manifest.csv", index=False)
    config = write_config(
        tmp / "p.yaml", root / "manifest.csv", tiny_model, run_name="packet",
        **{"data.classes": HOSTILE_CLASSES, "context": {"model_name": "DermNet <b>v3</b>", "intended_use": "triage"}},
    )  # fmt: skip
    run = run_audit(config).run_dir
    shutil.rmtree(root)  # the images are gone: the report must not need them
    return run


def test_every_section_is_in_the_pdf_with_the_data_attached(packet: Path) -> None:
    reader = PdfReader(packet / "report.pdf")
    text = "\n".join(page.extract_text() for page in reader.pages)
    for section in SECTIONS:
        assert section in text, section
    attached = reader.attachments
    assert {"images.parquet", "subgroups.csv", "exclusions.csv", "run.json", "config.json", "discovery.csv"} <= set(
        attached
    )
    # the tiny set has artifact masks and renderings: the report names the evidence each image rested on
    flat = " ".join(text.split())
    assert "Evidence used here: counterfactual for" in flat
    from_pdf = pd.read_parquet(io.BytesIO(attached["images.parquet"][0]))
    pd.testing.assert_frame_equal(from_pdf, pd.read_parquet(packet / "images.parquet"))
    xmp = reader.xmp_metadata
    assert xmp is not None
    raw = ET_tostring(xmp)
    assert "pdfaid:part" in raw and ">3<" in raw.replace('"3"', ">3<")  # PDF/A-3
    assert reader.metadata.title == "Focus audit — packet"


def ET_tostring(xmp) -> str:
    return xmp.stream.get_data().decode("utf-8", "replace") if hasattr(xmp, "stream") else str(xmp)


def test_user_strings_are_text_in_both_outputs(packet: Path) -> None:
    html = (packet / "report.html").read_text()
    assert "<script>alert(2)</script>" not in html and "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert "nevus</table>" not in html and "nevus&lt;/table&gt;" in html
    assert "DermNet &lt;b&gt;v3&lt;/b&gt;" in html
    text = "\n".join(p.extract_text() for p in PdfReader(packet / "report.pdf").pages)
    assert "<script>alert(2)</script>" in text.replace("\n", "") and "DermNet <b>v3</b>" in text


def test_group_names_in_any_script_neither_reorder_nor_flood_the_report(packet: Path) -> None:
    html = (packet / "report.html").read_text()
    at = [i for i in range(len(html)) if html.startswith(RTL_SITE, i)]
    assert at and all(html.rfind("\u2068", 0, i) > html.rfind("\u2069", 0, i) for i in at)  # inside an isolate
    assert LONG_SITE not in html and LONG_SITE[:120] + "… (500 characters" in html  # cut for display
    assert LONG_SITE in set(pd.read_csv(packet / "subgroups.csv", dtype=str)["group"])  # kept in the data
    fonts = subprocess.run(["fc-list"], capture_output=True, text=True).stdout if shutil.which("fc-list") else ""
    if "Noto Sans CJK" not in fonts:
        pytest.skip("no Noto Sans CJK font on this machine (make test installs Debian's fonts-noto-cjk)")
    reader = PdfReader(packet / "report.pdf")
    embedded = {
        str(font.get_object().get("/BaseFont"))
        for page in reader.pages
        for font in (page.get("/Resources", {}).get("/Font", {}) or {}).values()
    }
    assert any("NotoSansCJK" in f.replace("-", "") for f in embedded), embedded  # drawn with glyphs, not boxes


def test_rendering_again_from_the_folder_alone_gives_the_same_html(packet: Path, tmp_path: Path) -> None:
    first = (packet / "report.html").read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(packet, copy)
    shutil.rmtree(copy / "work")  # no shard files either
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    assert (copy / "report.html").read_bytes() == first
    render_report(copy)
    assert (copy / "report.html").read_bytes() == first
    broken = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert broken.exit_code == 2 and "not a finished audit run: missing images.parquet" in broken.output


def test_the_html_works_in_a_browser(packet: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium on this machine (make test installs Debian's chromium where it can)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", (packet / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert 'class="sort"' in dom or "sort" in dom.split('class="cases sortable"')[1][:400]  # the script ran
    assert 'id="case-count"' in dom and "cases</span>" in dom  # the filter counted the cases
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in dom and "<script>alert(2)</script>" not in dom
    shot = tmp_path / "page.png"
    page = (packet / "report.html").as_uri()
    shoot = [browser, *flags, "--window-size=1200,3000", f"--screenshot={shot}", page]
    subprocess.run(shoot, capture_output=True, timeout=120, check=True)
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert img.size == (1200, 3000) and img.getextrema()[0] < 100  # something dark (text) was drawn


def test_a_case_whose_image_is_gone_is_listed_not_drawn(packet: Path, tmp_path: Path) -> None:
    from audit.gallery import write_cases
    from audit.runfolder import load_run

    copy = tmp_path / "gone"
    shutil.copytree(packet, copy)
    run = load_run(copy)
    included = pd.concat([pd.read_parquet(p) for p in sorted((copy / "work").glob("shard_????.parquet"))])
    shutil.rmtree(copy / "cases")
    run.cases = write_cases(run.config, run.folder, run.images, run.subgroups, included)  # the images were deleted
    drawn = run.cases[0]["rows"]
    assert drawn and set(run.cases[0]["unavailable"]) == {str(r) for r in drawn}
    assert "image unavailable when the report was drawn" in run.cases[0]["unavailable"][str(drawn[0])]
    render_report(run)
    assert "image unavailable when the report was drawn" in (copy / "report.html").read_text()
