"""CSV files a person will open in a spreadsheet, written so no cell runs as a formula.

Group names, image ids and reasons come from the manifest, which the auditor may not control. A cell
such as ``=HYPERLINK(...)`` or ``+cmd|...`` is executed by spreadsheet programs when the CSV is opened
(CWE-1236), so text cells starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return get a
leading apostrophe (OWASP's recommendation), unless the whole cell is a plain number such as ``-0.5``.
Numeric columns are untouched.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def neutralise(value: object) -> object:
    """A formula-looking text cell gets a leading apostrophe (as does one that already starts with an
    apostrophe, so that :func:`restore` is its exact inverse)."""
    if isinstance(value, str) and value.startswith((*TRIGGERS, "'")) and not NUMBER.match(value):
        return "'" + value
    return value


def restore(value: object) -> object:
    """The value :func:`neutralise` was given (for readers of the run's own CSVs)."""
    if isinstance(value, str) and value[:1] == "'" and value[1:2] in (*TRIGGERS, "'"):
        return value[1:]
    return value


def read_csv(path: Path, **kwargs: object) -> pd.DataFrame:
    """A CSV written by :func:`write_csv`, with its text cells as they were before neutralising."""
    df = pd.read_csv(path, **kwargs)
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
            df[col] = df[col].map(restore)
    return df


def write_csv(df: pd.DataFrame, path: Path) -> None:
    safe = df.copy()
    for col in safe.columns:
        if safe[col].dtype == object or pd.api.types.is_string_dtype(safe[col]):
            safe[col] = safe[col].map(neutralise)
    safe.to_csv(path, index=False, float_format="%.6g")
