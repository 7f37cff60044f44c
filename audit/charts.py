"""The report's charts: matplotlib figures written as SVG (vector, so the PDF prints sharp).

Deterministic: a fixed hash salt for SVG ids and no date in the metadata, so rendering the same run
twice gives the same bytes. Every chart is returned as a ``data:image/svg+xml`` URI, which both the
HTML and WeasyPrint show without fetching anything.
"""

from __future__ import annotations

import base64
import io
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import font_manager
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

# group names come in any script: matplotlib falls back glyph by glyph through these families (font file
# -> family), where installed
FALLBACK = {
    "NotoSans-Regular.ttf": "Noto Sans",
    "NotoSansCJK-Regular.ttc": "Noto Sans CJK JP",
    "NotoSansArabic-Regular.ttf": "Noto Sans Arabic",
    "NotoSansHebrew-Regular.ttf": "Noto Sans Hebrew",
    "NotoSansDevanagari-Regular.ttf": "Noto Sans Devanagari",
    "NotoSansThai-Regular.ttf": "Noto Sans Thai",
}
SHOWN_LABEL = 60  # characters of a group label on a chart


def _fallback_families() -> list[str]:
    """The fallback families matplotlib can use; fonts installed after it cached its font list (``make``
    installs Noto on first use) are added to it here."""
    known = {f.name for f in font_manager.fontManager.ttflist}
    if not all(name in known for name in FALLBACK.values()):
        for path in font_manager.findSystemFonts():
            name = FALLBACK.get(path.rsplit("/", 1)[-1])
            if name and name not in known:
                font_manager.fontManager.addfont(path)
                known.add(name)
    return [name for name in FALLBACK.values() if name in known]


RC = {
    "font.family": ["DejaVu Sans", *_fallback_families()],
    "text.parse_math": False,  # a group named "$x$" is text, not (possibly invalid) math
    "svg.hashsalt": "focus-audit",
    "svg.fonttype": "path",
    "font.size": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
PROBLEM_COLOUR, OK_COLOUR, REFERENCE_COLOUR = "#c62828", "#37474f", "#1565c0"


def _svg_uri(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # a glyph no installed font has (colour emoji) is drawn as a box
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def _labels(groups: pd.DataFrame) -> list[str]:
    out = [f"{c} = {g}" for c, g in zip(groups["column"], groups["group"], strict=True)]
    return [t if len(t) <= SHOWN_LABEL else t[: SHOWN_LABEL - 1] + "…" for t in out]


def focus_by_group(groups: pd.DataFrame, overall: float, problems: tuple[str, ...]) -> str:
    """Mean focus per group with its CI; the line at 1 is a uniform map, the dashed line all images."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6.4, 0.28 * len(groups) + 0.9))
        y = np.arange(len(groups))[::-1]
        m = groups["focus_mean"].to_numpy(float)
        err = np.vstack([m - groups["focus_ci_low"].to_numpy(float), groups["focus_ci_high"].to_numpy(float) - m])
        colours = [PROBLEM_COLOUR if s in problems else OK_COLOUR for s in groups["status"]]
        for yi, mi, e0, e1, c in zip(y, m, err[0], err[1], colours, strict=True):
            ax.errorbar(mi, yi, xerr=[[e0], [e1]], fmt="o", color=c, ms=4, capsize=2)
        ax.axvline(1.0, color="#999", lw=0.8)
        ax.axvline(overall, color=REFERENCE_COLOUR, lw=0.8, ls="--", label=f"all images ({overall:.2f})")
        ax.set_yticks(y, _labels(groups))
        ax.set_xlabel("focus (mass in region / region area; 1 = uniform map), mean and CI")
        ax.legend(loc="lower right", frameon=False)
        return _svg_uri(fig)


def _plain_log_x(ax: plt.Axes, lowest: float, highest: float) -> None:
    """A log scale labelled 0.01, 0.1, 1, 10 (also 2 and 5 in each decade where the values span less
    than two decades, so a narrow range still gets labels): matplotlib's default labels are mathtext,
    which ``text.parse_math: False`` (needed for user-named groups) would print raw."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0,) if highest / lowest > 100 else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def focus_distributions(images: pd.DataFrame, columns: list[str]) -> str:
    """Per-image focus by group (box: quartiles; whiskers: 1.5 IQR), log scale: focus is a ratio."""
    data, labels = [], []
    for col in columns:
        for group, g in images.groupby(images[col].astype(str), sort=True):
            v = g["focus"].dropna().to_numpy(float)
            if len(v):
                data.append(np.clip(v, 1e-3, None))
                labels.append(f"{col} = {group} (n={len(v)})")
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6.4, 0.28 * max(len(data), 1) + 0.9))
        if data:
            ax.boxplot(data[::-1], vert=False, widths=0.6, flierprops={"markersize": 2})
            ax.set_yticks(np.arange(1, len(data) + 1), labels[::-1])
            values = np.concatenate([*data, [1.0]])  # the uniform-map line at 1 is drawn too
            _plain_log_x(ax, values.min(), values.max())
        ax.axvline(1.0, color="#999", lw=0.8)
        ax.set_xlabel("focus per image (log scale; 1 = uniform map)")
        return _svg_uri(fig)


def performance_vs_focus(groups: pd.DataFrame, problems: tuple[str, ...]) -> str:
    """Accuracy against mean focus per group, both with CIs: is the group the model looks wrong at also
    the group it gets wrong?"""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for _, g in groups.iterrows():
            c = PROBLEM_COLOUR if g["status"] in problems else OK_COLOUR
            x, y = float(g["focus_mean"]), float(g["accuracy"])
            xerr = [[x - float(g["focus_ci_low"])], [float(g["focus_ci_high"]) - x]]
            yerr = [[y - float(g["accuracy_ci_low"])], [float(g["accuracy_ci_high"]) - y]]
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=c, ms=4, capsize=2, lw=0.8)
            ax.annotate(f"{g['column']} = {g['group']}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axvline(1.0, color="#999", lw=0.8)
        ax.set_xlabel("mean focus [CI]")
        ax.set_ylabel("accuracy [CI]")
        return _svg_uri(fig)


def sanity_cascade(table: pd.DataFrame, limit: float, judged_step: int) -> str:
    """Similarity of the maps to the originals as the weights are re-initialised from the output back."""
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6.4, 2.8))
        ax.plot(table["step"], table["spearman"], "o-", ms=3, label="mean Spearman", color=OK_COLOUR)
        ax.plot(table["step"], table["ssim"], "s--", ms=3, label="mean SSIM", color="#78909c")
        ax.axhline(limit, color=PROBLEM_COLOUR, lw=0.8, ls=":", label=f"limit {limit:g}")
        ax.axvspan(0.5, judged_step + 0.5, color="#e3f2fd", lw=0)
        ax.set_xlabel("blocks re-initialised (output first); shaded: judged")
        ax.set_ylabel("similarity to the original maps")
        ax.set_ylim(-1, 1)
        ax.legend(frameon=False, fontsize=7)
        return _svg_uri(fig)
