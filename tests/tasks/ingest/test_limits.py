"""What one input may cost: refused before it is read, unpacked or decoded, with the limit
named, and kept in quarantine as far as it is safe to keep it."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

from tasks.ingest.inputs import collect_inputs
from tasks.ingest.limits import QUARANTINE_HEAD_BYTES, IngestLimits
from tasks.ingest.prepare import IngestStatus, prepare_input
from tests.support.dicom_factory import dicom_bytes, make_ct, write

SMALL = IngestLimits(
    max_file_bytes=4 * 1024**2,
    max_zip_members=3,
    max_zip_total_bytes=64 * 1024**2,
    max_zip_ratio=50,
    max_pixel_bytes=16 * 1024**2,
    max_frames=100,
)


def _prepare_all(path: Path, limits: IngestLimits = SMALL) -> dict[str, object]:
    return {ref.display: prepare_input(ref, limits) for ref in collect_inputs(path, limits)}


def test_symbolic_links_are_listed_but_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(make_ct(), outside / "secret.dcm")
    inbox = tmp_path / "inbox"
    write(make_ct(), inbox / "real.dcm")
    (inbox / "link.dcm").symlink_to(outside / "secret.dcm")
    (inbox / "folder-link").symlink_to(outside, target_is_directory=True)

    items = _prepare_all(inbox)

    assert set(items) == {str(inbox / n) for n in ("real.dcm", "link.dcm", "folder-link")}
    assert items[str(inbox / "real.dcm")].outcome is None  # type: ignore[attr-defined]
    for name in ("link.dcm", "folder-link"):
        item = items[str(inbox / name)]
        assert item.outcome.status == IngestStatus.QUARANTINED  # type: ignore[attr-defined]
        assert "symbolic link" in item.outcome.reason  # type: ignore[attr-defined]
        assert item.readable is False and item.data is None  # type: ignore[attr-defined]


def test_a_file_over_the_size_limit_keeps_its_head_and_full_hash(tmp_path: Path) -> None:
    big = tmp_path / "big.dcm"
    payload = os.urandom(5 * 1024**2)
    big.write_bytes(payload)

    [item] = _prepare_all(big).values()

    assert item.outcome.status == IngestStatus.QUARANTINED  # type: ignore[attr-defined]
    reason = item.outcome.reason  # type: ignore[attr-defined]
    assert "NEURONOVA_INGEST_MAX_FILE_BYTES" in reason and str(SMALL.max_file_bytes) in reason
    assert hashlib.sha256(payload).hexdigest() in reason
    assert item.data == payload[:QUARANTINE_HEAD_BYTES]  # type: ignore[attr-defined]


def test_a_zip_bomb_member_is_not_unpacked(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", bytes(32 * 1024**2))  # 32 MiB that pack into ~32 KiB
        zf.writestr("fine.dcm", dicom_bytes(make_ct()))

    items = _prepare_all(archive)

    bomb = items[f"{archive}!zeros.dcm"]
    assert "NEURONOVA_INGEST_MAX_ZIP_RATIO" in bomb.outcome.reason  # type: ignore[attr-defined]
    assert "not unpacked further" in bomb.outcome.reason  # type: ignore[attr-defined]
    assert len(bomb.data) == QUARANTINE_HEAD_BYTES  # type: ignore[attr-defined]
    assert items[f"{archive}!fine.dcm"].outcome is None  # type: ignore[attr-defined]


def test_an_archive_over_its_member_or_total_limit_is_refused_whole(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(4):
            zf.writestr(f"IM{i}", dicom_bytes(make_ct(i)))

    [item] = _prepare_all(archive).values()

    assert item.outcome.status == IngestStatus.QUARANTINED  # type: ignore[attr-defined]
    assert "zip members 4 is over the limit 3" in item.outcome.reason  # type: ignore[attr-defined]
    assert "NEURONOVA_INGEST_MAX_ZIP_MEMBERS" in item.outcome.reason  # type: ignore[attr-defined]


def test_declared_pixels_over_the_budget_are_refused_before_any_decode(tmp_path: Path) -> None:
    huge = make_ct()
    huge.Rows = huge.Columns = 65535  # a few KB declaring 8 GiB of pixels
    frames = make_ct()
    frames.NumberOfFrames = 5000
    write(huge, tmp_path / "huge.dcm")
    write(frames, tmp_path / "frames.dcm")

    items = _prepare_all(tmp_path)

    huge_reason = items[str(tmp_path / "huge.dcm")].outcome.reason  # type: ignore[attr-defined]
    assert "NEURONOVA_INGEST_MAX_PIXEL_BYTES" in huge_reason
    assert str(65535 * 65535 * 2) in huge_reason
    frames_reason = items[str(tmp_path / "frames.dcm")].outcome.reason  # type: ignore[attr-defined]
    assert "NumberOfFrames 5000" in frames_reason and "NEURONOVA_INGEST_MAX_FRAMES" in frames_reason
    # Kept whole (they are small), never decoded.
    assert items[str(tmp_path / "huge.dcm")].data == (tmp_path / "huge.dcm").read_bytes()  # type: ignore[attr-defined]


def test_a_file_that_kills_the_decoder_is_quarantined_after_one_crash(tmp_path: Path) -> None:
    """A child process dies inside the decoder (as a codec's segfault would take a worker);
    the next attempt finds the mark and quarantines the file instead of decoding it again."""
    import subprocess
    import sys

    from common.settings import PROJECT_ROOT
    from tasks.ingest.decode_guard import CRASHED, DecodeGuard

    source = write(make_ct(), tmp_path / "inbox" / "killer.dcm")
    marks = tmp_path / "decoding"
    crash = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "import tasks.ingest.prepare as prepare\n"
        "from tasks.ingest.decode_guard import DecodeGuard\n"
        "from tasks.ingest.inputs import InputRef\n"
        "prepare.transcode_to_htj2k = lambda *a, **k: os._exit(139)  # the codec dies\n"
        "prepare.prepare_input(InputRef(sys.argv[1]), guard=DecodeGuard(Path(sys.argv[2])))\n"
    )
    died = subprocess.run(
        [sys.executable, "-c", crash, str(source), str(marks)], cwd=PROJECT_ROOT, check=False
    )
    assert died.returncode == 139

    guard = DecodeGuard(marks)
    [ref] = collect_inputs(source)
    item = prepare_input(ref, guard=guard)

    assert item.outcome is not None and item.outcome.status == IngestStatus.QUARANTINED
    assert item.outcome.reason == CRASHED
    assert item.data == source.read_bytes()  # kept whole in quarantine
    # Once quarantined, the mark is gone: ingesting it again on purpose decodes it again.
    again = prepare_input(ref, guard=guard)
    assert again.outcome is None and again.result is not None
    assert not list(marks.iterdir())
