"""Load a MONAI bundle (ours, or a hospital's) offline and segment a volume with it.

A bundle is a directory in the MONAI bundle layout: `configs/metadata.json` (name, version,
`model_sha256`), `configs/inference.json` (`network_def`/`network`, `preprocessing`, `inferer`,
`postprocessing`), `models/model.pt` (a state dict). The weights are checked against the
recorded sha256 before they are loaded (`torch.load(weights_only=True)`), and nothing is
downloaded: no `monai.bundle.load`, no schema fetch.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from common.errors import NeuroNovaError
from tasks.dicom.volume import Volume
from tasks.inference.model_space import labels_to_volume_grid, to_model_grid

log = logging.getLogger(__name__)


class BundleError(NeuroNovaError):
    """A bundle that cannot be used as it is (the message says what is wrong)."""


@dataclass(frozen=True)
class LoadedBundle:
    root: Path
    name: str
    version: str
    sha256: str
    device: torch.device
    network: torch.nn.Module
    preprocessing: Any
    inferer: Any
    postprocessing: Any
    spacing_mm: tuple[float, float, float]
    metadata: dict[str, Any]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when there is one (or as asked), else the CPU, with denormals flushed (speed)."""
    default = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(preferred or default)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    return device


def load_bundle(root: Path, device: str | None = None) -> LoadedBundle:
    """The bundle at `root`, weights verified, network ready for inference."""
    from monai.bundle import ConfigParser  # imported here: MONAI costs seconds at start-up

    metadata_path = root / "configs" / "metadata.json"
    config_path = root / "configs" / "inference.json"
    weights = root / "models" / "model.pt"
    for path in (metadata_path, config_path, weights):
        if not path.is_file():
            raise BundleError(
                f"{root} is not a usable MONAI bundle: {path.relative_to(root)} is missing"
            )
    metadata = json.loads(metadata_path.read_text())
    expected = metadata.get("model_sha256")
    actual = file_sha256(weights)
    if not expected or actual != expected:
        raise BundleError(
            f"{weights}: sha256 {actual[:16]}… does not match the bundle's model_sha256 "
            f"{str(expected)[:16]}… (tampered or retrained without updating metadata.json)"
        )
    chosen = pick_device(device)
    parser = ConfigParser()
    parser.read_config(str(config_path))
    parser["bundle_root"] = str(root)
    parser["device"] = f"$torch.device('{chosen}')"
    network = parser.get_parsed_content("network")
    state = torch.load(weights, map_location=chosen, weights_only=True)
    network.load_state_dict(state)
    network.eval()
    spacing = tuple(float(s) for s in parser.get("spacing_mm", [2.0, 2.0, 2.0]))
    return LoadedBundle(
        root=root,
        name=str(metadata.get("name", root.name)),
        version=str(metadata.get("version", "0")),
        sha256=actual,
        device=chosen,
        network=network,
        preprocessing=parser.get_parsed_content("preprocessing"),
        inferer=parser.get_parsed_content("inferer"),
        postprocessing=parser.get_parsed_content("postprocessing"),
        spacing_mm=(spacing[0], spacing[1], spacing[2]),
        metadata=metadata,
    )


@functools.cache
def cached_bundle(root: Path, device: str | None = None) -> LoadedBundle:
    """The bundle loaded once per process (MONAI's import and the config parse cost seconds)."""
    return load_bundle(root, device)


def bundle_identity(root: Path) -> tuple[str, str]:
    """(name, version) from the bundle's metadata, without loading anything heavy."""
    path = root / "configs" / "metadata.json"
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"{path} cannot be read: {err}") from err
    return str(metadata.get("name", root.name)), str(metadata.get("version", "0"))


MIN_COMPONENT_VOXELS = 8  # at 2 mm: 64 mm³, smaller than any lesion worth reporting


def remove_small_components(
    labels: np.ndarray, min_voxels: int = MIN_COMPONENT_VOXELS
) -> np.ndarray:
    """Labels with every connected component (26-connectivity) under `min_voxels` cleared.

    Done here rather than in the bundle's post-processing: MONAI's RemoveSmallObjects needs
    scikit-image, and the smallest finding worth reporting is the platform's call.
    """

    foreground = labels > 0
    components, count = ndimage.label(foreground, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return labels
    sizes = np.bincount(components.ravel())
    small = sizes < min_voxels
    small[0] = False
    cleaned = labels.copy()
    cleaned[small[components]] = 0
    return cleaned


def segment(
    bundle: LoadedBundle, volume: np.ndarray, min_voxels: int = MIN_COMPONENT_VOXELS
) -> np.ndarray:
    """The label volume (uint8) for one single-channel volume at the bundle's spacing."""
    image = bundle.preprocessing(np.asarray(volume, dtype=np.float32))[None].to(bundle.device)
    autocast = bundle.device.type == "cuda"
    with torch.inference_mode(), torch.autocast(bundle.device.type, enabled=autocast):
        logits = bundle.inferer(image, bundle.network)
    labels = bundle.postprocessing(logits[0].float().cpu())
    return remove_small_components(np.asarray(labels[0], dtype=np.uint8), min_voxels)


# The segmentation of one volume, with its fallbacks: a GPU out of memory is tried again with
# smaller windows, then on the CPU.
@dataclass(frozen=True)
class SegmentationRun:
    mask: np.ndarray  # uint8 (slice, row, column), on the source grid
    device: str
    attempts: tuple[str, ...]  # what was tried, in order, and how it ended
    model_sha256: str  # the weights that produced it


FallbackPlan = tuple[str, Callable[[], LoadedBundle]]


def fallback_plans(bundle: LoadedBundle) -> list[FallbackPlan]:
    """How to get through an out-of-memory: as configured, smaller windows, then the CPU."""
    plans: list[FallbackPlan] = [("as configured", lambda: bundle)]
    plans.append(("smaller windows", lambda: with_smaller_windows(bundle)))
    if bundle.device.type != "cpu":
        plans.append(("on the CPU", lambda: on_cpu(bundle)))
    return plans


def with_smaller_windows(bundle: LoadedBundle) -> LoadedBundle:
    """One window at a time, half the size (multiples of 16), stitched in host memory."""
    from monai.inferers import SlidingWindowInferer

    inferer = bundle.inferer
    roi = getattr(inferer, "roi_size", (64, 64, 64))
    smaller = [max(16, (int(r) // 2) // 16 * 16) for r in roi]
    return replace(
        bundle,
        inferer=SlidingWindowInferer(
            roi_size=smaller,
            sw_batch_size=1,
            overlap=float(getattr(inferer, "overlap", 0.25)),
            mode=getattr(inferer, "mode", "gaussian"),
            device=torch.device("cpu"),
        ),
    )


def on_cpu(bundle: LoadedBundle) -> LoadedBundle:
    """A CPU copy of the bundle (the cached GPU one stays as it is for the next study)."""
    torch.set_flush_denormal(True)
    network = copy.deepcopy(bundle.network).to("cpu")
    return replace(with_smaller_windows(bundle), network=network, device=torch.device("cpu"))


def segment_with_fallback(
    bundle: LoadedBundle, image: np.ndarray
) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """Labels for a model-grid image, trying each plan in turn on out-of-memory errors."""
    attempts: list[str] = []
    for name, make in fallback_plans(bundle):
        plan = make()
        try:
            labels = segment(plan, image)
        except torch.OutOfMemoryError as err:
            attempts.append(f"{name} on {plan.device}: out of memory")
            log.warning(
                "inference %s on %s ran out of memory (%s); next plan",
                name,
                plan.device,
                str(err).splitlines()[0][:120],
            )
            if plan.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        attempts.append(f"{name} on {plan.device}: ok")
        return labels, str(plan.device), tuple(attempts)
    raise torch.OutOfMemoryError("; ".join(attempts))


def segment_volume(bundle: LoadedBundle, volume: Volume) -> SegmentationRun:
    """The lesion mask on the volume's own grid: to RAS at the model's spacing, and back."""
    grid = to_model_grid(volume, bundle.spacing_mm)
    labels, device, attempts = segment_with_fallback(bundle, grid.image)
    mask = labels_to_volume_grid(labels, grid)
    return SegmentationRun(mask=mask, device=device, attempts=attempts, model_sha256=bundle.sha256)
