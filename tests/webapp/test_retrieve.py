"""WADO-RS as PS3.18 says: which Accept headers get the stored form and which the decoded
explicit VR little endian one, the multipart bodies a DICOMweb client parses, and decoding an
HTJ2K instance back to the very pixels it was made from."""

from __future__ import annotations

import io
from email import message_from_bytes

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from neuronova.sample import ct_slice_dataset, head_phantom
from tasks.dicom.transcode import transcode_to_htj2k
from webapp.retrieve import (
    DICOM,
    EXPLICIT_LE,
    OCTET_STREAM,
    Multipart,
    NotAcceptable,
    answer_syntax,
    explicit_le_frames,
    explicit_le_instance,
)

HTJ2K = "1.2.840.10008.1.2.4.201"


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "*/*",
        'multipart/related; type="application/octet-stream"; transfer-syntax=*',
        f'multipart/related; type="application/octet-stream"; transfer-syntax={HTJ2K}',
        f"multipart/related;type=application/octet-stream;transfer-syntax={HTJ2K}",
        'application/json, multipart/related; type="application/octet-stream"; transfer-syntax=*',
        "application/dicom+json;q=0.9, */*;q=0.1",
    ],
)
def test_the_stored_syntax_is_given_to_whoever_accepts_it(accept: str) -> None:
    assert answer_syntax(accept, HTJ2K, OCTET_STREAM) == HTJ2K


@pytest.mark.parametrize(
    "accept",
    [
        # No transfer syntax means explicit VR little endian (PS3.18): decoded for the client.
        'multipart/related; type="application/octet-stream"',
        f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT_LE}',
        "multipart/related",
    ],
)
def test_a_client_that_names_no_syntax_gets_explicit_little_endian(accept: str) -> None:
    assert answer_syntax(accept, HTJ2K, OCTET_STREAM) == EXPLICIT_LE


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="image/jpeg"; transfer-syntax=*',
        "application/dicom",
        "application/octet-stream; transfer-syntax=*",  # single part: not offered
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50',
    ],
)
def test_other_forms_are_not_acceptable_and_the_answer_says_what_is(accept: str) -> None:
    with pytest.raises(NotAcceptable, match=f"{HTJ2K}.*{EXPLICIT_LE}"):
        answer_syntax(accept, HTJ2K, OCTET_STREAM)


def test_what_the_gate_cannot_decode_is_offered_only_as_stored() -> None:
    jpeg = "1.2.840.10008.1.2.4.50"
    with pytest.raises(NotAcceptable) as refused:
        answer_syntax(f'multipart/related; type="{DICOM}"', jpeg, DICOM, decodable=False)
    assert EXPLICIT_LE not in str(refused.value)


def test_each_part_is_labelled_with_its_syntax_and_every_answer_has_its_own_boundary() -> None:
    frames = [b"\xff\x4f first frame \r\n--", b"\xff\x4f second"]
    multipart = Multipart.new(OCTET_STREAM)
    body = multipart.whole((frame, HTJ2K) for frame in frames)
    content_type = multipart.content_type
    assert content_type.startswith('multipart/related; type="application/octet-stream"; boundary=')
    message = message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = message.get_payload()
    assert isinstance(parts, list) and len(parts) == 2
    for part, frame in zip(parts, frames, strict=True):
        assert part.get_content_type() == "application/octet-stream"
        assert part.get_param("transfer-syntax") == HTJ2K
        assert part.get_payload(decode=True) == frame
    assert Multipart.new(OCTET_STREAM).boundary != multipart.boundary


def _htj2k_ct() -> tuple[bytes, np.ndarray]:
    uid = pydicom.uid.generate_uid
    pixels = head_phantom(64, 48, 0.1).astype(np.int16)
    ds = ct_slice_dataset(pixels, 1, study_uid=uid(), series_uid=uid(), frame_uid=uid())
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    source = buffer.getvalue()
    stored = transcode_to_htj2k(pydicom.dcmread(io.BytesIO(source)), bytes_in=len(source))
    assert stored.transfer_syntax == HTJ2K
    return stored.data, ds.pixel_array


def test_an_htj2k_instance_decodes_to_explicit_little_endian_with_its_pixels_exact() -> None:
    stored, pixels = _htj2k_ct()
    decoded = pydicom.dcmread(io.BytesIO(explicit_le_instance(stored)))
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(decoded.pixel_array, pixels)
    original = pydicom.dcmread(io.BytesIO(stored))
    assert decoded.SOPInstanceUID == original.SOPInstanceUID
    (frame,) = explicit_le_frames(stored, [1])
    assert frame == pixels.astype("<" + pixels.dtype.str[1:]).tobytes()
    with pytest.raises(IndexError):
        explicit_le_frames(stored, [2])
