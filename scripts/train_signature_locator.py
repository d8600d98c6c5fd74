"""Train the signature locator of :mod:`scopegym.agents.spectrum_locator` on the twin.

Generates fields on ``scopegym/SpectrumDiscovery-v1`` (train samples for training, validation
samples for the figures; every episode seeded): the observation's frame after reset, and as
labels the signature class the twin's ground truth gives at each of the 24 × 24 spectrum grid
positions (``truth.signature_at`` at the probe positions of the true field of view, as the
``signatures`` reward classifies spectra). Computes every position's features
(:func:`position_features`) and fits the classifier with a class-weighted cross-entropy
(weights ∝ frequency^-1/2: most positions are lattice).

Prints the time per stage, and after every epoch, on the validation fields, the classes that
the policy's choice of 24 positions finds next to 24 random positions and to the ceiling (the
classes at all 576 positions), counted in the locator's classes (dopant elements merged); then
saves the weights.

Usage:
    python scripts/train_signature_locator.py [--train-fields 6000] [--valid-fields 300]
        [--epochs 4] [--hidden 64] [--seed 0] [--cache /tmp/fields.npz] [--generate-only]
        [--out src/scopegym/agents/data/signature_locator.pt]

The shipped weights come from this command with its defaults (the README gives its figures).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional  # noqa: E402

import scopegym  # noqa: E402, F401  (registers the environments)
from scopegym.agents.spectrum_locator import (  # noqa: E402
    DEFAULT_WEIGHTS,
    FEATURES,
    LOCATOR_CLASSES,
    SignatureLocator,
    expected_new_classes,
    grid_signatures,
    locator_class,
    position_features,
    save_locator,
)

ENV_ID = "scopegym/SpectrumDiscovery-v1"
SPECTRA = 24


def generate(split: str, fields: int, seed: int) -> dict[str, np.ndarray]:
    """Frames and per-position signature classes of ``fields`` seeded episodes.

    Returns:
        ``frames`` (fields, 1, N, N) uint8, ``labels`` (fields, grid, grid) class indices,
        ``ceilings`` (fields,) the number of distinct twin signatures (elements and families
        told apart, as the reward does) over all positions, and ``field_nm`` the side of the
        field of view [nm].
    """
    env = gym.make(ENV_ID, samples=split)
    core = env.unwrapped
    grid = core.task.action_config.spectrum_grid
    frames, labels, ceilings = [], [], []
    for index in range(fields):
        observation, _ = env.reset(seed=seed + index)
        signatures = grid_signatures(core.truth, grid)
        frames.append(observation["frame"])
        labels.append([[locator_class(s) for s in row] for row in signatures])
        ceilings.append(len({s for row in signatures for s in row}))
    field_nm = core.instrument.state().fov_nm
    env.close()
    return {
        "field_nm": np.asarray(field_nm),
        "frames": np.asarray(frames, dtype=np.uint8),
        "labels": np.asarray(labels, dtype=np.int64),
        "ceilings": np.asarray(ceilings, dtype=np.int64),
    }


def featurise(data: dict[str, np.ndarray]) -> np.ndarray:
    """Features of every field's grid positions, shape (fields, grid², len(FEATURES))."""
    grid = data["labels"].shape[-1]
    return np.stack(
        [position_features(f, grid, float(data["field_nm"])) for f in data["frames"]]
    ).astype(np.float32)


def found_classes(
    model: SignatureLocator,
    features: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """Mean locator classes found in 24 spectra: the locator's choice, random, all positions."""
    model.eval()
    with torch.no_grad():
        probabilities = model(torch.from_numpy(features)).softmax(dim=-1).double().numpy()
    chosen, random_, everything = [], [], []
    for p, field in zip(probabilities, labels.reshape(len(labels), -1), strict=True):
        measured = np.zeros(len(field), dtype=bool)
        for _ in range(SPECTRA):
            measured[int(np.argmax(expected_new_classes(p, measured)))] = True
        chosen.append(len(set(field[measured])))
        random_.append(len(set(field[rng.choice(len(field), SPECTRA, replace=False)])))
        everything.append(len(set(field)))
    return float(np.mean(chosen)), float(np.mean(random_)), float(np.mean(everything))


def train(
    features: np.ndarray,
    labels: np.ndarray,
    valid: tuple[np.ndarray, np.ndarray],
    epochs: int,
    hidden: int,
    seed: int,
    batch_size: int = 2048,
) -> SignatureLocator:
    """Fit the locator; prints the loss and the validation figures after every epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SignatureLocator(hidden=hidden)
    model.set_normalisation(features)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    x = torch.from_numpy(features.reshape(-1, len(FEATURES)))
    y = torch.from_numpy(labels.reshape(-1))
    counts = np.bincount(labels.reshape(-1), minlength=len(LOCATOR_CLASSES)) + 1.0
    weight = torch.tensor((counts.sum() / counts) ** 0.5, dtype=torch.float32)
    weight = weight / weight.mean()
    for epoch in range(epochs):
        model.train()
        started = time.perf_counter()
        order = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            loss = functional.cross_entropy(model(x[index]), y[index], weight=weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(index)
        seconds = time.perf_counter() - started
        found, random_, ceiling = found_classes(model, *valid, np.random.default_rng(0))
        print(
            f"epoch {epoch + 1}: loss {total / len(order):.4f} ({seconds:.0f} s); validation "
            f"classes in 24 spectra: locator {found:.3f}, random {random_:.3f}, "
            f"all positions {ceiling:.3f}",
            flush=True,
        )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-fields", type=int, default=6000)
    parser.add_argument("--valid-fields", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="npz of the training fields (made if absent)")
    parser.add_argument("--generate-only", action="store_true", help="write the cache and stop")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.cache is not None and args.cache.exists():
        data = dict(np.load(args.cache))
        print(f"{len(data['frames'])} training fields from {args.cache}")
    else:
        started = time.perf_counter()
        data = generate("train", args.train_fields, args.seed)
        seconds = time.perf_counter() - started
        print(f"{args.train_fields} training fields in {seconds:.0f} s", flush=True)
        if args.cache is not None:
            np.savez_compressed(args.cache, **data)
    if args.generate_only:
        return
    # Validation seeds start far from the training ones; the sample sets are disjoint anyway.
    valid = generate("validation", args.valid_fields, 10_000_000 + args.seed)
    started = time.perf_counter()
    features, valid_features = featurise(data), featurise(valid)
    print(
        f"features of {len(features) + len(valid_features)} fields in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    model = train(
        features,
        data["labels"],
        (valid_features, valid["labels"]),
        args.epochs,
        args.hidden,
        args.seed,
    )
    found, random_, ceiling = found_classes(
        model, valid_features, valid["labels"], np.random.default_rng(0)
    )
    save_locator(
        model,
        args.out,
        {
            "train_fields": len(data["frames"]),
            "epochs": args.epochs,
            "seed": args.seed,
            "validation_found": found,
            "validation_random": random_,
            "validation_all_positions": ceiling,
        },
    )
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
