"""The brain-lesion bundle: its metadata, the weight check, and the real configs on small volumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.settings import Settings
from models.synthetic_lesions import dice, make_case
from tasks.inference.segmentation import BundleError, file_sha256, load_bundle, segment

BUNDLE = Settings().model_bundle_dir
HELD_OUT_SEED = 10_000


@pytest.fixture(scope="module")
def bundle():  # type: ignore[no-untyped-def]
    return load_bundle(BUNDLE, device="cpu")


def test_metadata_says_what_the_model_is_and_is_not() -> None:
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert metadata["version"] and metadata["changelog"][metadata["version"]]
    assert "not for clinical use" in metadata["intended_use"]
    assert metadata["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert metadata["model_sha256"] == file_sha256(BUNDLE / "models" / "model.pt")
    assert metadata["eval_metrics"]["held_out_dice"] >= 0.85
    assert (BUNDLE / "models" / "model.pt").stat().st_size < 10_000_000  # a few MB, committed
    assert "Dice" in (BUNDLE / "docs" / "README.md").read_text()


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    weights = copy / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(copy, device="cpu")


def test_an_incomplete_bundle_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy)
    (copy / "configs" / "inference.json").unlink()
    with pytest.raises(BundleError, match=r"inference\.json is missing"):
        load_bundle(copy, device="cpu")


def test_the_bundle_finds_held_out_lesions(bundle) -> None:  # type: ignore[no-untyped-def]
    case = make_case(HELD_OUT_SEED + 1)  # never trained on; 98x116x94 at 2 mm
    assert case.lesions > 0
    labels = segment(bundle, case.image)
    assert labels.shape == case.mask.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1}
    assert dice(labels > 0, case.mask > 0) >= 0.8


def test_a_brain_without_lesions_stays_almost_empty(bundle) -> None:  # type: ignore[no-untyped-def]
    case = next(
        make_case(s)
        for s in range(HELD_OUT_SEED + 100, HELD_OUT_SEED + 200)
        if make_case(s).lesions == 0
    )
    labels = segment(bundle, case.image)
    assert labels.sum() < 0.0005 * labels.size
