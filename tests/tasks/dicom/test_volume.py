"""A series back as one volume: HTJ2K decoded into place, slices ordered, geometry kept."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest

from models.synthetic_lesions import make_case
from neuronova.sample_mr import SAMPLE_MR_SEED, mr_volume, write_sample_mr_study
from tasks.dicom.transcode import transcode_to_htj2k
from tasks.dicom.volume import VolumeError, volume_from_files


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    return write_sample_mr_study(tmp_path_factory.mktemp("mr") / "study")


def _htj2k(path: Path) -> bytes:
    data = path.read_bytes()
    result = transcode_to_htj2k(pydicom.dcmread(path), bytes_in=len(data), source=data)
    assert result.transfer_syntax == "1.2.840.10008.1.2.4.201"
    return result.data


def test_the_sample_has_held_out_lesions_and_a_matching_mask(
    sample: tuple[list[Path], Path],
) -> None:
    files, mask_path = sample
    assert make_case(SAMPLE_MR_SEED).lesions > 0
    mask = np.load(mask_path)
    assert mask.shape == (len(files), 116, 98) and mask.sum() > 50
    first = pydicom.dcmread(files[0])
    assert (
        first.Modality == "MR" and first.FrameOfReferenceUID and first.SpacingBetweenSlices == 2.0
    )


def test_htj2k_files_in_any_order_become_the_volume(sample: tuple[list[Path], Path]) -> None:
    files, _ = sample
    blobs = [_htj2k(p) for p in files]
    random.Random(7).shuffle(blobs)
    volume = volume_from_files(blobs)
    expected, _mask = mr_volume()
    assert volume.pixels.dtype == np.uint16
    assert np.array_equal(volume.pixels, expected)
    assert volume.spacing == (2.0, 2.0, 2.0)
    first = pydicom.dcmread(files[0])
    assert np.allclose(volume.affine[:3, 3], first.ImagePositionPatient)
    last = pydicom.dcmread(files[-1])
    assert np.allclose(volume.affine @ [0, 0, len(files) - 1, 1], [*last.ImagePositionPatient, 1])
    assert volume.sop_instance_uids[0] == first.SOPInstanceUID


def test_headers_come_in_slice_order_when_asked_for(sample: tuple[list[Path], Path]) -> None:
    files, _ = sample
    blobs = [_htj2k(p) for p in files[:20]]
    random.Random(3).shuffle(blobs)
    assert volume_from_files(blobs).headers == ()
    volume = volume_from_files(blobs, with_headers=True)
    assert [h.SOPInstanceUID for h in volume.headers] == list(volume.sop_instance_uids)
    assert "PixelData" not in volume.headers[0]


def test_native_files_take_the_pydicom_path_to_the_same_volume(
    sample: tuple[list[Path], Path],
) -> None:
    files, _ = sample
    blobs = [p.read_bytes() for p in files]
    random.Random(5).shuffle(blobs)
    volume = volume_from_files(blobs)
    expected, _mask = mr_volume()
    assert np.array_equal(volume.pixels, expected) and volume.spacing == (2.0, 2.0, 2.0)
    assert [h.SOPInstanceUID for h in volume.headers] == list(volume.sop_instance_uids)
    assert "PixelData" not in volume.headers[0]


def test_a_missing_slice_is_refused(sample: tuple[list[Path], Path]) -> None:
    files, _ = sample
    blobs = [p.read_bytes() for p in files]
    del blobs[len(blobs) // 2]
    with pytest.raises(VolumeError, match="irregular"):
        volume_from_files(blobs)


@pytest.mark.integration
def test_a_series_comes_back_from_orthanc_as_the_volume(
    orthanc, sample: tuple[list[Path], Path]
) -> None:  # type: ignore[no-untyped-def]
    from tasks.archive.orthanc import OrthancClient
    from tasks.dicom.volume import read_series_from_orthanc
    from tasks.ingest.batch import ingest_batch
    from tasks.ingest.inputs import collect_inputs

    files, _ = sample
    outcomes = ingest_batch(orthanc, collect_inputs(files[0].parent))
    assert {o.status for o in outcomes} <= {"stored", "duplicate"}
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    with OrthancClient.from_settings(orthanc) as client:
        series_id = client.lookup(series_uid, "Series")
        assert series_id is not None
        volume = read_series_from_orthanc(client, series_id)
    expected, _mask = mr_volume()
    assert np.array_equal(volume.pixels, expected)
    assert volume.spacing == (2.0, 2.0, 2.0)
    assert np.allclose(volume.affine[:3, 3], pydicom.dcmread(files[0]).ImagePositionPatient)
    assert volume.sop_instance_uids[0] == pydicom.dcmread(files[0]).SOPInstanceUID


def test_the_codestream_is_cut_from_our_files_exactly(sample: tuple[list[Path], Path]) -> None:
    from pydicom.encaps import generate_frames

    from tasks.dicom.volume import codestream_from_file

    files, _ = sample
    for path in files[:5]:
        blob = _htj2k(path)
        (expected,) = generate_frames(
            pydicom.dcmread(io.BytesIO(blob)).PixelData, number_of_frames=1
        )
        assert codestream_from_file(blob) == expected
    assert codestream_from_file(files[0].read_bytes()) is None  # not HTJ2K: ask Orthanc
    assert codestream_from_file(_htj2k(files[0])[:-40]) is None  # truncated: refused
