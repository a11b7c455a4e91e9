"""Out of memory: smaller windows, then the CPU, every attempt named."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from common.settings import Settings
from tasks.inference.segmentation import (
    LoadedBundle,
    fallback_plans,
    load_bundle,
    segment_with_fallback,
)


class _RunsOutOfMemory(torch.nn.Module):
    """A network that fails like a full GPU when given more than `max_batch` windows at once."""

    def __init__(self, inner: torch.nn.Module, max_batch: int) -> None:
        super().__init__()
        self.inner, self.max_batch, self.calls = inner, max_batch, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if x.shape[0] > self.max_batch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        result: torch.Tensor = self.inner(x)
        return result


@pytest.fixture(scope="module")
def bundle() -> LoadedBundle:
    return load_bundle(Settings().model_bundle_dir, device="cpu")


def test_out_of_memory_falls_back_to_smaller_windows(bundle: LoadedBundle) -> None:
    image = np.random.default_rng(0).random((80, 80, 80), dtype=np.float32)  # 8 windows
    flaky = replace(bundle, network=_RunsOutOfMemory(bundle.network, max_batch=1))
    labels, device, attempts = segment_with_fallback(flaky, image)
    assert attempts == ("as configured on cpu: out of memory", "smaller windows on cpu: ok")
    assert device == "cpu" and labels.shape == image.shape


def test_out_of_memory_everywhere_fails_with_every_attempt_named(bundle: LoadedBundle) -> None:
    hopeless = replace(bundle, network=_RunsOutOfMemory(bundle.network, max_batch=0))
    with pytest.raises(torch.OutOfMemoryError, match="smaller windows on cpu: out of memory"):
        segment_with_fallback(hopeless, np.ones((32, 32, 32), dtype=np.float32))


def test_a_gpu_bundle_ends_on_the_cpu(bundle: LoadedBundle) -> None:
    on_gpu = replace(bundle, device=torch.device("cuda"))
    plans = [(name, make()) for name, make in fallback_plans(on_gpu)]
    assert [name for name, _ in plans] == ["as configured", "smaller windows", "on the CPU"]
    assert plans[1][1].inferer.sw_batch_size == 1 and list(plans[1][1].inferer.roi_size) == [32] * 3
    assert plans[2][1].device.type == "cpu"
    assert next(plans[2][1].network.parameters()).device.type == "cpu"
