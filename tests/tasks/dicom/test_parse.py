"""Parsing and validation of incoming DICOM (no services)."""

from __future__ import annotations

import io

import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from common.errors import MalformedDicom, MissingIdentifier, UnreadablePixelData
from neuronova.sample import ct_slice_dataset, head_phantom
from tasks.dicom.parse import content_sha256, parse_dicom, validate_identifiers


def ct() -> Dataset:
    return ct_slice_dataset(
        head_phantom(32, 32, 0.0),
        0,
        generate_uid(),
        generate_uid(),
        generate_uid(),
        sop_uid=generate_uid(),
    )


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_parse_and_validate_a_real_file() -> None:
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    ids = validate_identifiers(parse_dicom(data))
    assert ids.patient_id and ids.modality == "CT"
    assert ids.sop_uid == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"hello world" * 100, "not a DICOM file"),
        (bytes(128) + b"DICM" + b"\x02\x00", ""),
    ],
    ids=["empty", "text", "preamble-only"],
)
def test_unparsable_input_is_malformed(data: bytes, message: str) -> None:
    with pytest.raises((MalformedDicom, MissingIdentifier)) as err:
        validate_identifiers(parse_dicom(data))
    assert message in str(err.value)


@pytest.mark.parametrize("keep", [0.05, 0.3, 0.8, 0.99])
def test_truncation_anywhere_is_refused(keep: float) -> None:
    data = to_bytes(ct())
    with pytest.raises((MalformedDicom, MissingIdentifier, UnreadablePixelData)):
        validate_identifiers(parse_dicom(data[: int(len(data) * keep)]))


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("PatientID", "", "missing PatientID"),
        ("PatientID", "   ", "missing PatientID"),
        ("StudyInstanceUID", "", "missing StudyInstanceUID"),
        ("SeriesInstanceUID", "1.2.abc", "invalid SeriesInstanceUID"),
        ("SOPInstanceUID", "../../etc/passwd", "invalid SOPInstanceUID"),
        ("SOPInstanceUID", "1." + "2" * 70, "invalid SOPInstanceUID"),
        ("SOPClassUID", "", "missing SOPClassUID"),
    ],
)
def test_bad_identifiers_are_refused(keyword: str, value: str, message: str) -> None:
    ds = ct()
    setattr(ds, keyword, value)
    with pytest.raises(MissingIdentifier, match=message):
        validate_identifiers(parse_dicom(to_bytes(ds)))


def test_image_without_pixel_data_is_refused() -> None:
    ds = ct()
    del ds.PixelData
    with pytest.raises(UnreadablePixelData, match="no Pixel Data"):
        validate_identifiers(parse_dicom(to_bytes(ds)))


def test_content_hash_ignores_encoding_but_not_content() -> None:
    ds = ct()
    same = parse_dicom(to_bytes(ds))
    other = parse_dicom(to_bytes(ds))
    other.PatientID = "SOMEONE-ELSE"
    assert content_sha256(ds, "p") == content_sha256(same, "p")
    assert content_sha256(ds, "p") != content_sha256(other, "p")
    assert content_sha256(ds, "p") != content_sha256(ds, "q")
