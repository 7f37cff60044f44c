"""Paths from the manifest, resolved inside the data root or refused.

The manifest comes from people the auditor may not control. A path that leads outside the data root
(``..``, an absolute path elsewhere, a symlink pointing out) is never opened: the file would be read,
audited and embedded as a thumbnail in a report that travels to reviewers.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from audit.inputs.errors import InputError

OUTSIDE_HINT = "put the file inside the data root, or set data.root to a folder that contains it"


class DataRoot:
    """The folder every file an audit reads must lie in (after resolving symlinks)."""

    def __init__(self, root: Path) -> None:
        self.given = Path(os.path.abspath(root))  # as configured (may pass through a symlink)
        self.root = Path(root).resolve()

    def _inside(self, path: Path | str, root: Path | None = None) -> bool:
        root = root or self.root
        return os.path.commonpath([root, path]) == str(root)

    def resolve(self, value: object, column: str) -> Path:
        """The regular file ``value`` names (relative to the root, or absolute inside it)."""
        text = str(value)
        shown = text if len(text) <= 120 else text[:117] + "..."
        if "\x00" in text:
            raise InputError("path contains a NUL byte", column=column, file=shown.replace("\x00", "\\0"))
        candidate = Path(text) if os.path.isabs(text) else self.root / text
        lexical = os.path.normpath(candidate)
        if not (self._inside(lexical) or self._inside(lexical, self.given)):
            raise InputError(
                f"{column} leads outside the data root {self.root}", column=column, file=shown, hint=OUTSIDE_HINT
            )
        try:
            resolved = candidate.resolve(strict=True)
        except FileNotFoundError:
            raise InputError(f"{column}: file not found", column=column, file=shown) from None
        except RuntimeError:  # Python < 3.13 reports a symlink loop this way
            raise InputError(f"{column}: symlink loop", column=column, file=shown) from None
        except OSError as err:
            reason = {
                errno.ELOOP: "symlink loop",
                errno.ENAMETOOLONG: "path too long for the file system",
                errno.EACCES: "permission denied",
                errno.ENOTDIR: "a part of the path is not a folder",
            }.get(err.errno or 0, f"cannot open: {err.strerror or err}")
            raise InputError(f"{column}: {reason}", column=column, file=shown) from None
        if not self._inside(resolved):
            raise InputError(
                f"{column} is a symlink that leads outside the data root {self.root}",
                column=column,
                file=shown,
                hint=OUTSIDE_HINT,
            )
        if not resolved.is_file():
            raise InputError(f"{column}: not a regular file", column=column, file=shown)
        return resolved
