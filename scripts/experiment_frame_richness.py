"""Can the policy's frame encoder tell a defect-rich atomic frame from a poor one?

The experiment behind the README's DefectSearch-v4 paragraph on ``hotspot_oracle`` (issue 10).
That privileged teacher stays in a hot spot while the present 4 nm field holds >= 3 defects; a
student can only imitate the decision if its frame shows which fields those are. Hot-spot frames
without a hole's rim are the case that matters: a rim is easy to see, and in the teacher's own
episodes nearly every rimless atomic frame is in a hot spot, so a student that cannot see the
defects learns "no rim: tile on" and walks on through poor film.

Fresh atomic frames are collected on training and validation samples from two sources, each
labelled with the twin's true count of scored defects in the field: ``hotspot_oracle``'s
episodes (rims and hot spots), and a serpentine walk of whole 4 nm fields from the episode's
start (mostly plain film). Then the policy's own image encoder
(:class:`scopegym.agents.features.ImageEncoder`, as ``agent=maskable_ppo_pointers`` builds it)
with a linear head is trained to classify "rich" (>= ``--rich`` defects) on the training
frames, and its ROC AUC is measured on the validation frames, rimless and rim frames apart
(rim: :func:`scopegym.agents.baselines.find_atomic_rim` finds one, as the expert does). A few
frame statistics are scored the same way, for comparison: high-passed extremes, spread, and the
pixels that depart from the lattice once its Bragg peaks are taken out
(:func:`scopegym.agents.lattice.lattice_outliers`). An AUC near 0.5 on the rimless frames means
the reading cannot tell the decision at this data size.

``--protocol-episodes N`` then asks whether acting on a reading pays, on the first N
validation samples: ``lattice_hotspot`` (defined here, not a registered baseline) is
``reactive_shift_expert`` except at a fresh rimless atomic frame with at least
``--rich-pixels`` departing pixels, where it ``tile``s one whole field towards the side of the
frame where they crowd; beside it ``hotspot_oracle`` and two ablations of it (a random
neighbour instead of the truth's choice; rimless frames only) show which part of the truth the
oracle's gain needs.

Usage (the README's figures: ~1 min, and ~5 min more with the protocols)::

    .venv/bin/python scripts/experiment_frame_richness.py --out frame_richness.json
    .venv/bin/python scripts/experiment_frame_richness.py --protocol-episodes 40
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from scipy import ndimage

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.baselines import (
    ReactiveShiftExpertPolicy,
    ScriptedPolicy,
    find_atomic_rim,
)
from scopegym.agents.evaluation import evaluate
from scopegym.agents.features import ImageEncoder
from scopegym.agents.lattice import lattice_outliers
from scopegym.agents.statistics import bootstrap_interval
from scopegym.agents.teachers import HotspotOracle, defects_in_field

ENV_ID = "scopegym/DefectSearch-v4"


def _walk(policy: ScriptedPolicy, step: int) -> np.ndarray:
    """A serpentine walk of whole atomic fields: rows of 8 along x, one field along y between."""
    if not math.isclose(policy.instrument_state.fov_nm, policy.finest_fov_nm):
        return policy.zoom_to(policy.finest_fov_nm)
    steps = list(policy.config.move_steps)
    row, along = divmod(step, 9)
    if along == 8:
        return policy.action("tile", dx=steps.index(0.0), dy=steps.index(1.0))
    sense = 1.0 if row % 2 == 0 else -1.0
    return policy.action("tile", dx=steps.index(sense), dy=steps.index(0.0))


class LatticeHotspotPolicy(ReactiveShiftExpertPolicy):
    """``reactive_shift_expert``'s rim search that stays where the frame shows lattice defects.

    An operator who sees a field crowded with dopants and vacancies images its surroundings
    before moving on; the specimens' defect-rich hot spots (tens of nm across) are invisible at
    low magnification, so only an atomic frame reveals one. At a fresh atomic frame without a
    hole's rim (a rim is followed as the parent does), this protocol counts the pixels that
    depart from the lattice (:func:`~scopegym.agents.lattice.lattice_outliers`); where there
    are at least ``rich_pixels``, it ``tile``s by one whole field to the neighbour not yet
    taken whose side of the frame holds the most of them (ties: the first in x-major order).
    Elsewhere, and where every neighbour was taken, it decides as its parent.

    Args:
        env: A DefectSearch-v4 or Survey-v4 environment (the ``tile`` macro).
        rich_pixels: Departing pixels that make a field worth staying around.
        **kwargs: :class:`~scopegym.agents.baselines.ReactiveShiftExpertPolicy`'s arguments.

    Raises:
        ValueError: The environment has no ``tile`` macro.
    """

    name = "lattice_hotspot"

    def __init__(self, env: gym.Env[Any, Any], rich_pixels: int = 20, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        if "tile" not in self.config.verbs:
            raise ValueError("lattice_hotspot needs the tile macro (DefectSearch-v4, Survey-v4)")
        self.rich_pixels = int(rich_pixels)

    def _decide(self) -> np.ndarray | None:
        if not self._at_fresh_atomic_frame():
            return super()._decide()
        if find_atomic_rim(self.observation["frame"], self.finest_fov_nm) is not None:
            # Vacuum breaks the lattice too: on a rim the outliers count the hole.
            return super()._decide()
        outliers = lattice_outliers(self.observation["frame"])
        if int(outliers.sum()) < self.rich_pixels:
            return super()._decide()
        harvest = self._richest_side(outliers)
        return harvest if harvest is not None else super()._decide()

    def _richest_side(self, outliers: np.ndarray) -> np.ndarray | None:
        """The whole-field ``tile`` towards the side of the frame where the outliers crowd."""
        size = outliers.shape[0]
        rows, cols = np.nonzero(outliers)
        # Offsets from the centre in frame pixels, y down the rows as the view's y.
        offsets = np.stack([cols - 0.5 * (size - 1), rows - 0.5 * (size - 1)], axis=1)
        best: tuple[int, np.ndarray] | None = None
        for direction, action in self._untaken_neighbour_tiles():
            unit = direction / np.hypot(*direction)
            mass = int(np.count_nonzero(offsets @ unit > 0.25 * size))
            if best is None or mass > best[0]:
                best = (mass, action)
        return None if best is None else best[1]


def collect(split: str, samples: int, walk_steps: int) -> dict[str, np.ndarray]:
    """Fresh atomic frames with their true defect counts and whether they show a rim.

    Args:
        split: Sample set.
        samples: Episodes per source, on the split's first samples.
        walk_steps: Steps of each serpentine walk.
    """
    env = gym.make(ENV_ID, samples=split)
    core = env.unwrapped
    frames, counts, rims, sources = [], [], [], []
    for source in ("hotspot_oracle", "walk"):
        for seed in range(samples):
            oracle = HotspotOracle(env)
            observation, _ = env.reset(seed=seed)
            done, step = False, 0
            atomic = oracle.finest_fov_nm
            while not done and (source != "walk" or step < walk_steps):
                if source == "walk":
                    action = _walk(oracle, step)
                else:
                    action = oracle.label(observation, core.action_masks())
                observation, _, terminated, truncated, _ = env.step(action)
                done, step = terminated or truncated, step + 1
                fresh = float(np.asarray(observation["state"])[-1]) > 0.5
                if not (fresh and math.isclose(oracle.instrument_state.fov_nm, atomic)):
                    continue
                x_nm, y_nm = core.truth.view_center_nm()
                frame = np.asarray(observation["frame"])
                frames.append(frame.copy())
                counts.append(defects_in_field(core, x_nm, y_nm, atomic, uncredited_only=False))
                rims.append(find_atomic_rim(frame, atomic) is not None)
                sources.append(source)
    return {
        "frames": np.asarray(frames),
        "counts": np.asarray(counts),
        "rims": np.asarray(rims, dtype=bool),
        "sources": np.asarray(sources),
    }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties halved); None with one class only."""
    labels = np.asarray(labels, dtype=bool)
    positive, negative = scores[labels], scores[~labels]
    if positive.size == 0 or negative.size == 0:
        return None
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (positive.size * negative.size))


def frame_statistics(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame statistics a hand detector might use: high-passed extremes, spread, breaks."""
    stats: dict[str, list[float]] = {
        "highpass_min": [],
        "highpass_max": [],
        "std": [],
        "lattice_outliers": [],
    }
    for frame in frames:
        stats["lattice_outliers"].append(float(lattice_outliers(frame).sum()))
        image = np.asarray(frame, dtype=np.float64).reshape(frame.shape[-2:])
        smooth = ndimage.gaussian_filter(image, 1.5)
        highpass = smooth - ndimage.uniform_filter(smooth, 13)
        stats["highpass_min"].append(float(highpass.min()))
        stats["highpass_max"].append(float(highpass.max()))
        stats["std"].append(float(image.std()))
    return {key: np.asarray(values) for key, values in stats.items()}


def _aucs(labels: np.ndarray, scores: np.ndarray, rims: np.ndarray) -> dict[str, float | None]:
    return {
        "all": roc_auc(labels, scores),
        "rimless": roc_auc(labels[~rims], scores[~rims]),
        "rim": roc_auc(labels[rims], scores[rims]),
    }


def probe(
    train: dict[str, np.ndarray], validation: dict[str, np.ndarray], rich: int, epochs: int
) -> list[dict[str, Any]]:
    """Train the image encoder and a linear head on "rich"; validation AUCs after each epoch."""
    torch.manual_seed(0)
    encoder = ImageEncoder(int(train["frames"].shape[1]), (16, 32, 64), 64)
    head = torch.nn.Linear(64, 1)
    optimiser = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3)
    images = torch.as_tensor(train["frames"])
    targets = torch.as_tensor((train["counts"] >= rich).astype(np.float32))
    held = torch.as_tensor(validation["frames"])
    labels = validation["counts"] >= rich
    history = []
    for epoch in range(epochs):
        order = torch.randperm(len(images))
        losses = []
        for start in range(0, len(images), 64):
            batch = order[start : start + 64]
            logits = head(encoder(images[batch])).squeeze(1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            scores = head(encoder(held)).squeeze(1).numpy()
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "validation_auc": _aucs(labels, scores, validation["rims"]),
            }
        )
        print(json.dumps(history[-1]), flush=True)
    return history


def compare_protocols(episodes: int, rich_pixels: int) -> dict[str, Any]:
    """Defects per hour of the hot-spot protocols against ``reactive_shift_expert``, validation.

    ``lattice_hotspot`` (observation only) and three forms of the privileged ``hotspot_oracle``:
    itself, with a random neighbour not yet taken instead of the truth's choice, and staying
    at rimless frames only (the ablations say which of its truth its gain needs). Each through
    :func:`~scopegym.agents.evaluation.evaluate` on the first ``episodes`` validation samples:
    the mean with a 95 % percentile-bootstrap interval, and the paired bootstrap of the ratio of
    its mean to the expert's (10 000 resamples, seed 0).
    """
    protocols: dict[str, Callable[[Any], ScriptedPolicy]] = {
        "reactive_shift_expert": ReactiveShiftExpertPolicy,
        "lattice_hotspot": lambda env: LatticeHotspotPolicy(env, rich_pixels=rich_pixels),
        "hotspot_oracle": HotspotOracle,
        "hotspot_oracle_random_neighbour": lambda env: HotspotOracle(env, neighbour="random"),
        "hotspot_oracle_rimless_only": lambda env: HotspotOracle(env, rimless_only=True),
    }
    rates = {}
    for name, make in protocols.items():
        results = evaluate(make, ENV_ID, samples="validation", episodes=episodes)
        rates[name] = np.array([r.metrics["defects_per_hour"] for r in results])
    expert = rates["reactive_shift_expert"]
    draws = np.random.default_rng(0).integers(0, len(expert), size=(10_000, len(expert)))
    report: dict[str, Any] = {"episodes": len(expert)}
    for name, values in rates.items():
        ratios = values[draws].mean(axis=1) / expert[draws].mean(axis=1)
        report[name] = {
            "mean": float(values.mean()),
            "interval": bootstrap_interval(values),
            "ratio_to_expert": float(values.mean() / expert.mean()),
            "ratio_interval": [float(q) for q in np.quantile(ratios, (0.025, 0.975))],
            "per_episode": values.tolist(),
        }
    return report


def _summary(data: dict[str, np.ndarray], rich: int) -> dict[str, Any]:
    rims, counts = data["rims"], data["counts"]
    return {
        "frames": int(len(counts)),
        "rimless": int((~rims).sum()),
        "rich_fraction_rimless": float(np.mean(counts[~rims] >= rich)) if (~rims).any() else None,
        "rich_fraction_rim": float(np.mean(counts[rims] >= rich)) if rims.any() else None,
        "count_histogram": np.bincount(counts).tolist(),
        "frames_by_source": {
            str(s): int((data["sources"] == s).sum()) for s in set(data["sources"])
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=16)
    parser.add_argument("--validation-samples", type=int, default=8)
    parser.add_argument("--walk-steps", type=int, default=80)
    parser.add_argument("--rich", type=int, default=3, help="defects that make a field rich")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument(
        "--protocol-episodes",
        type=int,
        default=0,
        help="also score lattice_hotspot against reactive_shift_expert on this many validation "
        "samples (0: skip)",
    )
    parser.add_argument("--rich-pixels", type=int, default=20, help="lattice_hotspot's threshold")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    train = collect("train", args.train_samples, args.walk_steps)
    validation = collect("validation", args.validation_samples, args.walk_steps)
    labels = validation["counts"] >= args.rich
    report: dict[str, Any] = {
        "env_id": ENV_ID,
        "rich_defects": args.rich,
        "train": _summary(train, args.rich),
        "validation": _summary(validation, args.rich),
        "statistics_auc": {
            # The better of the two senses: a statistic may fall as well as rise with richness.
            name: {
                key: None if value is None else max(value, 1.0 - value)
                for key, value in _aucs(labels, scores, validation["rims"]).items()
            }
            for name, scores in frame_statistics(validation["frames"]).items()
        },
    }
    print(json.dumps({k: v for k, v in report.items() if k != "statistics_auc"}), flush=True)
    report["encoder_probe"] = probe(train, validation, args.rich, args.epochs)
    if args.protocol_episodes > 0:
        report["protocols"] = compare_protocols(args.protocol_episodes, args.rich_pixels)
        print(json.dumps({"protocols": report["protocols"]}), flush=True)
    report["wall_s"] = time.perf_counter() - started
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({"statistics_auc": report["statistics_auc"], "wall_s": report["wall_s"]}))
    return report


if __name__ == "__main__":
    main()
