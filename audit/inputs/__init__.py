"""Inputs: everything between a manifest row and the model's pixels.

``paths`` keeps every read inside the data root, ``raster`` and ``dicom`` decode images at their full
bit depth, ``masks`` turns each way teams store regions into a boolean array, ``pixels`` turns decoded
pixels into the model's tensor, and ``reader`` ties them together per row. Every problem with one row
is an :class:`InputError`, which becomes that row's exclusion.
"""

from audit.inputs.errors import InputError
from audit.inputs.pixels import Picture, to_tensor
from audit.inputs.reader import RowReader, Sample, blank

__all__ = ["InputError", "Picture", "RowReader", "Sample", "blank", "to_tensor"]
