"""Writing a dataset as a DICOM Part 10 file (transcode's last step): pydicom's writer, with
the file meta completed and checked, and big endian word values made little endian first.
"""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from common.errors import MalformedDicom

# Binary VRs made of multi-byte words: pydicom keeps their bytes as read, so a big endian
# source needs them swapped when it is written little endian (it does not do it itself).
_WORD_SIZES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def swap_words_to_little_endian(ds: Dataset) -> bool:
    """Byte-swap OW/OL/OF/OD/OV values read big endian, in `ds` and its sequences.

    Elements are replaced, never changed in place, and sequence items are copied before
    anything in them changes, so the dataset `ds` was copied from stays as it was read.
    Returns whether anything was swapped.
    """
    swapped = False
    for tag in list(ds.keys()):
        if tag == 0x7FE00010:
            continue
        elem = ds[tag]
        size = _WORD_SIZES.get(str(elem.VR))
        value = elem.value
        if size and isinstance(value, bytes | bytearray) and len(value) % size == 0:
            words = np.frombuffer(value, dtype=f">u{size}")
            ds[tag] = DataElement(tag, elem.VR, words.astype(f"<u{size}").tobytes())
            swapped = True
        elif elem.VR == "SQ" and value:
            items = [_shallow_copy_item(item) for item in value]
            if any([swap_words_to_little_endian(item) for item in items]):
                ds[tag] = DataElement(
                    tag, "SQ", items, is_undefined_length=elem.is_undefined_length
                )
                swapped = True
    return swapped


def _shallow_copy_item(item: Dataset) -> Dataset:
    """Copy a sequence item so that replacing its elements leaves the original alone."""
    copied = Dataset(dict(item.items()))
    implicit, little = item.original_encoding
    copied.set_original_encoding(implicit, little, item.original_character_set)
    return copied


def to_part10(ds: Dataset) -> bytes:
    """Write `ds` as a DICOM Part 10 file, completing and checking its file meta."""
    try:
        return _write(ds)
    except (AttributeError, ValueError, TypeError) as err:
        if None in ds.original_encoding:
            raise MalformedDicom(f"cannot write a valid DICOM file: {err}") from err
    # Some files are not encoded as their transfer syntax says (e.g. implicit VR under an
    # explicit one); forgetting the original encoding makes pydicom re-encode every element.
    ds.set_original_encoding(None, None)
    try:
        return _write(ds)
    except (AttributeError, ValueError, TypeError) as err:
        raise MalformedDicom(f"cannot write a valid DICOM file: {err}") from err


def _write(ds: Dataset) -> bytes:
    """Serialise `ds` with its file meta into bytes."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
