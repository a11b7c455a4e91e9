"""Train the brain-lesion bundle's network on synthetic data (CPU is enough), then record it.

The network is built from the bundle's own `configs/inference.json`, so what is trained is what
the loader builds. Training volumes are synthetic (models/synthetic_lesions.py, seeds below
10000); held-out volumes use seeds from 10000 and are never trained on. At the end: the weights
in `models/model.pt`, and their sha256 and the held-out Dice in `configs/metadata.json` (copy the
figures into `docs/README.md`).

    .venv/bin/python -m models.train_brain_lesion_seg [--minutes 10] [--cases 48]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss

from models.synthetic_lesions import SyntheticCase, dice, make_case
from tasks.inference.segmentation import remove_small_components

BUNDLE = Path(__file__).resolve().parent / "brain_lesion_seg"
HELD_OUT_SEED = 10_000
PATCH = 64


def bundle_parser() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser["device"] = "$torch.device('cpu')"
    return parser


def normalise(image: np.ndarray) -> np.ndarray:
    """As the bundle's NormalizeIntensity(nonzero=True)."""
    inside = image > 0
    values = image[inside]
    out = np.zeros_like(image)
    out[inside] = (values - values.mean()) / max(float(values.std()), 1e-6)
    return out


def random_patch(case: SyntheticCase, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 64³ crop, centred on a lesion half the time, flipped left-right at random."""
    image, mask = normalise(case.image), case.mask
    shape = np.array(image.shape)
    if mask.any() and rng.random() < 0.5:
        centre = np.argwhere(mask)[rng.integers(mask.sum())]
    else:
        centre = rng.integers(PATCH // 2, shape - PATCH // 2)
    start = np.clip(centre - PATCH // 2, 0, shape - PATCH)
    sl = tuple(slice(int(s), int(s) + PATCH) for s in start)
    x, y = image[sl], mask[sl]
    if rng.random() < 0.5:
        x, y = x[::-1], y[::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def evaluate(network: torch.nn.Module, parser: ConfigParser, seeds: list[int]) -> list[float]:
    """Dice per held-out volume, through the bundle's own pre/post-processing and inferer."""
    network.eval()
    pre, inferer, post = (
        parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing")
    )
    scores = []
    with torch.no_grad():
        for seed in seeds:
            case = make_case(seed)
            logits = inferer(pre(case.image)[None], network)
            prediction = remove_small_components(np.asarray(post(logits[0])[0], dtype=np.uint8))
            scores.append(dice(prediction > 0, case.mask > 0))
    network.train()
    return scores


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--minutes", type=float, default=10.0)
    args.add_argument("--cases", type=int, default=48)
    args.add_argument("--held-out", type=int, default=8)
    args.add_argument("--batch", type=int, default=2)
    options = args.parse_args()
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    rng = np.random.default_rng(0)

    parser = bundle_parser()
    network = parser.get_parsed_content("network")
    print(f"generating {options.cases} training volumes …", flush=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        cases = list(pool.map(make_case, range(options.cases)))
    optimiser = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    deadline = time.monotonic() + options.minutes * 60
    step, started = 0, time.monotonic()
    while time.monotonic() < deadline:
        batch = [random_patch(cases[rng.integers(len(cases))], rng) for _ in range(options.batch)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])[:, None]).float()
        y = torch.from_numpy(np.stack([b[1] for b in batch])[:, None]).long()
        optimiser.zero_grad()
        loss = loss_fn(network(x), y)
        loss.backward()
        optimiser.step()
        step += 1
        if step % 50 == 0:
            print(
                f"step {step:5d}  loss {loss.item():.3f}  {time.monotonic() - started:6.0f} s",
                flush=True,
            )

    weights = BUNDLE / "models" / "model.pt"
    torch.save(network.state_dict(), weights)  # first: an evaluation problem must not lose them
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    seeds = list(range(HELD_OUT_SEED, HELD_OUT_SEED + options.held_out))
    scores = evaluate(network, parser, seeds)
    with_lesions = [s for s, seed in zip(scores, seeds, strict=True) if make_case(seed).lesions > 0]
    mean_dice = float(np.mean(with_lesions)) if with_lesions else float("nan")
    rounded = [round(s, 3) for s in scores]
    print(f"held-out Dice per volume: {rounded}; mean over those with lesions {mean_dice:.3f}")

    metadata_path = BUNDLE / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["model_sha256"] = digest
    metadata["eval_metrics"] = {
        "held_out_dice": round(mean_dice, 4),
        "held_out_volumes": len(seeds),
        "held_out_seeds": [seeds[0], seeds[-1]],
        "training_steps": step,
        "training_minutes_cpu": round((time.monotonic() - started) / 60, 1),
    }
    metadata_path.write_text(json.dumps(metadata, indent=4) + "\n")
    print(f"saved {weights} ({weights.stat().st_size / 1e6:.1f} MB, sha256 {digest[:16]}…)")


if __name__ == "__main__":
    main()
