"""WADO-RS frames built by the gate: which Accept headers get the stored frames, and the
multipart body a DICOMweb client parses."""

from __future__ import annotations

from email import message_from_bytes

import pytest

from webapp.frames import frames_acceptable, multipart_frames

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
    assert frames_acceptable(accept, HTJ2K)


@pytest.mark.parametrize(
    "accept",
    [
        # No transfer syntax means explicit little endian (PS3.18): the archive has HTJ2K.
        'multipart/related; type="application/octet-stream"',
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
        'multipart/related; type="image/jpeg"; transfer-syntax=*',
        "application/dicom",
        "application/octet-stream; transfer-syntax=*",  # single part: not offered
    ],
)
def test_other_forms_are_not_acceptable(accept: str) -> None:
    assert not frames_acceptable(accept, HTJ2K)


def test_an_uncompressed_archive_serves_a_client_that_names_no_syntax() -> None:
    accept = 'multipart/related; type="application/octet-stream"'
    assert frames_acceptable(accept, "1.2.840.10008.1.2.1")


def test_each_frame_is_one_part_labelled_with_the_stored_syntax() -> None:
    frames = [b"\xff\x4f first frame \r\n--", b"\xff\x4f second"]
    content_type, body = multipart_frames(frames, HTJ2K)
    assert content_type.startswith('multipart/related; type="application/octet-stream"; boundary=')

    message = message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    parts = message.get_payload()
    assert isinstance(parts, list) and len(parts) == 2
    for part, frame in zip(parts, frames, strict=True):
        assert part.get_content_type() == "application/octet-stream"
        assert part.get_param("transfer-syntax") == HTJ2K
        assert part.get_payload(decode=True) == frame


def test_every_answer_has_a_boundary_of_its_own() -> None:
    first, _ = multipart_frames([b"x"], HTJ2K)
    second, _ = multipart_frames([b"x"], HTJ2K)
    assert first != second
