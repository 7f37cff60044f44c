"""The one error a row's inputs raise: what is wrong, where, and how to fix it."""

from __future__ import annotations


class InputError(ValueError):
    """One manifest row cannot be used. Becomes that row's exclusion, never the run's crash.

    ``column`` is the manifest column whose value is at fault (``image_path``, ``sex``, ...), ``file``
    the file concerned (as the manifest names it), ``hint`` what the user can do about it.
    """

    def __init__(self, reason: str, *, column: str = "", file: str = "", hint: str = "") -> None:
        super().__init__(reason)
        self.reason, self.column, self.file, self.hint = reason, column, file, hint

    def located(self, column: str, file: str) -> InputError:
        """The same error, with the column and file filled in where the raiser did not know them."""
        return InputError(self.reason, column=self.column or column, file=self.file or file, hint=self.hint)


class NoRegion(InputError):
    """The row has no region annotation (no mask file, no box, no COCO annotation). Not a reason to
    drop the row: it is audited for performance and left out of localisation, with this reason."""
