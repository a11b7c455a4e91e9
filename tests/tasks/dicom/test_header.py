"""The header scanner agrees with pydicom on every attribute it reads, or steps aside."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from neuronova.sample import write_sample_study
from neuronova.sample_mr import write_sample_mr_study
from tasks.dicom.header import WANTED, scan_header
from tasks.dicom.transcode import transcode_to_htj2k
from tests.support.dicom_factory import make_dataset, to_part10


def _pydicom_view(blob: bytes) -> dict[str, str]:
    """What pydicom reads for the scanner's attributes, as strings."""
    ds = pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True)
    found = {}
    for name in WANTED.values():
        container = ds.file_meta if name == "TransferSyntaxUID" else ds
        if name in container:
            value = container[name].value
            if isinstance(value, list | pydicom.multival.MultiValue):
                found[name] = "\\".join(str(v) for v in value)
            else:
                found[name] = str(value)
    return found


def _same(scanned: dict[str, str], expected: dict[str, str]) -> None:
    assert set(scanned) == set(expected)
    for name, value in expected.items():
        parts, reference = scanned[name].split("\\"), value.split("\\")
        try:
            assert [float(p) for p in parts] == [float(r) for r in reference], name
        except ValueError:
            assert parts == reference, name


def _files(tmp_path: Path) -> list[bytes]:
    mr, _ = write_sample_mr_study(tmp_path / "mr")
    ct = write_sample_study(tmp_path / "ct", slices=2)
    blobs = [p.read_bytes() for p in (*mr[:2], *ct)]
    for path in (mr[0], ct[0]):
        data = path.read_bytes()
        blobs.append(
            transcode_to_htj2k(pydicom.dcmread(path), bytes_in=len(data), source=data).data
        )
    return blobs


def test_the_scanner_reads_what_pydicom_reads(tmp_path: Path) -> None:
    for blob in _files(tmp_path):
        scanned = scan_header(blob)
        assert scanned is not None
        _same(scanned, _pydicom_view(blob))


def test_sequences_of_any_length_are_skipped(tmp_path: Path) -> None:
    ds = make_dataset()
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "1", "DCM", "x"
    nested = Dataset()
    nested.ConceptNameCodeSequence = Sequence([inner])
    ds.ContentSequence = Sequence([nested, nested])  # (0040,A730), before the geometry tags
    for undefined in (True, False):
        path = tmp_path / f"seq-{undefined}.dcm"
        ds.ContentSequence.is_undefined_length = undefined
        ds.save_as(path, enforce_file_format=True)
        blob = path.read_bytes()
        scanned = scan_header(blob)
        assert scanned is not None
        _same(scanned, _pydicom_view(blob))


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_other_encodings_are_left_to_pydicom(tmp_path: Path, syntax: str) -> None:
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "other.dcm"
    ds.save_as(
        path,
        implicit_vr=syntax == ImplicitVRLittleEndian,
        little_endian=syntax == ImplicitVRLittleEndian,
    )
    assert scan_header(path.read_bytes()) is None


def test_truncated_or_foreign_bytes_give_none() -> None:
    blob = to_part10(make_dataset())
    inside_a_uid = blob.index(b"\x08\x00\x18\x00UI") + 12  # (0008,0018) cut mid-value
    assert scan_header(blob[:inside_a_uid]) is None
    assert scan_header(b"not dicom at all" * 20) is None
    assert scan_header(blob[:140] + b"\xff" * 40) is None
    assert scan_header(blob) is not None
