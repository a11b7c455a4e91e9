"""Parse and validate incoming DICOM: the checks every instance passes before it is transcoded.

Each failure raises an `IngestError` subclass whose message is the quarantine reason, so it
must say what is wrong in words an operator can act on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from common.errors import MalformedDicom, MissingIdentifier, UnreadablePixelData
from tasks.dicom.uid import is_uid

# Strict enough to keep identifiers safe in URLs and paths, loose enough for real scanners
# (leading zeros in a component are invalid per PS3.5 but common, so they pass).
_PIXEL_DATA = Tag(0x7FE0, 0x0010)
# Attributes a lossless transcode may legitimately rewrite (pixel data, its offset tables,
# photometric interpretation, planar configuration); excluded from the content hash.
_TRANSCODE_MUTABLE = {
    _PIXEL_DATA,
    Tag(0x7FE0, 0x0001),
    Tag(0x7FE0, 0x0002),
    Tag(0x0028, 0x0004),
    Tag(0x0028, 0x0006),
}


@dataclass(frozen=True)
class InstanceIds:
    """The identifiers ingest needs, validated."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str | None
    series_number: int | None
    study_date: str | None
    accession_number: str | None
    study_description: str | None = None


def parse_dicom(data: bytes) -> Dataset:
    """Parse a Part 10 file (or a bare dataset), refusing empty, foreign and truncated input."""
    if not data:
        raise MalformedDicom("empty file (0 bytes)")
    ds: Dataset
    try:
        ds = dcmread(BytesIO(data))
    except InvalidDicomError:
        ds = _parse_without_preamble(data)
    except Exception as err:  # pydicom raises many types on garbage; all mean "unparsable"
        raise MalformedDicom(f"cannot parse as DICOM: {type(err).__name__}") from err
    _check_not_truncated(ds)
    return ds


def _parse_without_preamble(data: bytes) -> Dataset:
    """Some senders write a bare dataset; accept it only if it really looks like DICOM."""
    try:
        ds = dcmread(BytesIO(data), force=True)
    except Exception as err:
        raise MalformedDicom("not a DICOM file (no 'DICM' prefix, not a dataset)") from err
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise MalformedDicom("not a DICOM file (no 'DICM' prefix and no SOP identifiers)")
    return ds


def _check_not_truncated(ds: Dataset) -> None:
    """pydicom silently shortens the last value of a cut file; a short value means truncation."""
    if len(ds) == 0:
        raise MalformedDicom("truncated file: no attributes after the file meta information")
    for elem in ds._dict.values():
        if (
            isinstance(elem, RawDataElement)
            and elem.value is not None
            and elem.length != 0xFFFFFFFF
            and len(elem.value) < elem.length
        ):
            raise MalformedDicom(
                f"truncated file: element {elem.tag} has {len(elem.value)} of {elem.length} bytes"
            )


def validate_identifiers(ds: Dataset) -> InstanceIds:
    """Require PatientID, the study/series/SOP UIDs and, for images, pixel data."""
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        raise MissingIdentifier("missing PatientID (0010,0020)")
    uids = {
        keyword: _valid_uid(ds, keyword)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    }
    sop_class = UID(uids["SOPClassUID"])
    if "Image Storage" in sop_class.name and _PIXEL_DATA not in ds:
        raise UnreadablePixelData(
            f"{sop_class.name} instance has no Pixel Data (7FE0,0010): truncated or incomplete"
        )
    return InstanceIds(
        patient_id=patient_id,
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        modality=_optional_text(ds, "Modality"),
        series_number=_optional_int(ds, "SeriesNumber"),
        study_date=_optional_text(ds, "StudyDate"),
        accession_number=_optional_text(ds, "AccessionNumber"),
        # For the worklist; a modality may send more than the 64 characters of the VR.
        study_description=(_optional_text(ds, "StudyDescription") or "")[:64] or None,
    )


def _valid_uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    if not value:
        raise MissingIdentifier(f"missing {keyword}")
    if not is_uid(value):
        raise MissingIdentifier(f"invalid {keyword}: not a DICOM UID (digits and dots, <= 64)")
    return value


def _optional_text(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip()
    return value or None


def _optional_int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def content_sha256(ds: Dataset, pixel_sha256: str | None) -> str:
    """Identity of an instance's content, independent of its transfer syntax.

    Hashes every attribute a lossless transcode keeps, plus the decoded pixels' hash (or the
    encapsulated bytes when they cannot be decoded, i.e. lossy data kept as it is). Two files
    with one SOPInstanceUID and different hashes are a conflict.
    """
    header = Dataset()
    for tag in ds.keys():
        if tag not in _TRANSCODE_MUTABLE:
            header[tag] = ds[tag]
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, header)
    digest = hashlib.sha256(buffer.getvalue())
    if pixel_sha256 is not None:
        digest.update(pixel_sha256.encode())
    elif _PIXEL_DATA in ds:
        digest.update(hashlib.sha256(ds.PixelData).hexdigest().encode())
    return digest.hexdigest()
