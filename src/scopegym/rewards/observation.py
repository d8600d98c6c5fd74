"""Observation-only rewards: computed from the frames alone, so they run on real instruments too.

* ``novelty``: the fraction of a frame's patches unlike anything seen earlier in the episode
  (the real-instrument analogue of ``discovery``).
* ``quality``: signal-to-noise ratio and contrast of a frame, estimated from the frame itself.
* ``atom_finding``: seed 004's physics rewards of the atoms a reward-tuned LoG finds in a frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from scopegym.instrument import Frame
from scopegym.rewards.atoms import (
    GRAPHENE_ATOMS_PER_NM2,
    GRAPHENE_BOND_NM,
    AtomFindingScore,
    LatticePrior,
    LoGParams,
    find_atoms,
    optimise_atom_finder,
    score_atoms,
)
from scopegym.rewards.base import RewardModule, StepContext, register_reward
from scopegym.rewards.primitives import tolerance

__all__ = [
    "AtomFindingReward",
    "FrameQuality",
    "NoveltyReward",
    "QualityReward",
    "frame_quality",
    "patch_embeddings",
]


def _resample(image: np.ndarray, size_px: int) -> np.ndarray:
    """Area-average an image to ``size_px`` x ``size_px`` (block means when the size divides)."""
    rows, cols = image.shape
    if rows % size_px == 0 and cols % size_px == 0:
        return image.reshape(size_px, rows // size_px, size_px, cols // size_px).mean(axis=(1, 3))
    # Anti-alias to the target pixel, then interpolate.
    blurred = ndimage.gaussian_filter(image, (0.5 * rows / size_px, 0.5 * cols / size_px))
    zoomed = ndimage.zoom(blurred, (size_px / rows, size_px / cols), order=1)
    return np.asarray(zoomed[:size_px, :size_px])


def patch_embeddings(
    frame: Frame, grid_px: int = 64, patch_px: int = 8, scale_weight: float = 0.5
) -> np.ndarray:
    """Cheap, shift-tolerant descriptors of a frame's patches.

    The frame is area-averaged to ``grid_px`` x ``grid_px``, normalised to zero mean and unit
    standard deviation, and cut into ``patch_px`` x ``patch_px`` patches. Each patch is
    described by its mean, its standard deviation, an 8-bin histogram of its values between −3
    and 3 (as fractions), its gradient energy, and the base-2 logarithm of its side length in nm
    times ``scale_weight``, so the same structure seen at another magnification differs.

    Args:
        frame: The frame.
        grid_px: Side of the resampled frame [px].
        patch_px: Side of a patch in the resampled frame [px]; must divide ``grid_px``.
        scale_weight: Weight of the scale coordinate [1/octave].

    Returns:
        Descriptors, shape ((grid_px / patch_px)², 12) [dimensionless].

    Raises:
        ValueError: If ``patch_px`` does not divide ``grid_px``.

    """
    if grid_px % patch_px:
        raise ValueError(f"patch_px = {patch_px} must divide grid_px = {grid_px}")
    image = _resample(np.asarray(frame.counts, dtype=np.float64), grid_px)
    spread = image.std()
    z = (image - image.mean()) / spread if spread > 0 else np.zeros_like(image)
    n = grid_px // patch_px
    patches = z.reshape(n, patch_px, n, patch_px).transpose(0, 2, 1, 3).reshape(n * n, -1)
    edges = np.linspace(-3.0, 3.0, 9)
    clipped = np.clip(patches, edges[0], edges[-1])
    bins = np.clip(np.searchsorted(edges, clipped, side="right") - 1, 0, 7)
    histogram = np.stack([np.count_nonzero(bins == b, axis=1) for b in range(8)], axis=1)
    histogram = histogram / patches.shape[1]
    blocks = patches.reshape(-1, patch_px, patch_px)
    gradient = 0.5 * (
        np.mean(np.diff(blocks, axis=1) ** 2, axis=(1, 2))
        + np.mean(np.diff(blocks, axis=2) ** 2, axis=(1, 2))
    )
    patch_nm = frame.fov_nm * patch_px / grid_px
    scale = np.full(len(patches), scale_weight * math.log2(max(patch_nm, 1e-12)))
    return np.column_stack(
        (
            0.5 * patches.mean(axis=1),
            0.5 * patches.std(axis=1),
            histogram,
            0.25 * np.sqrt(gradient),
            scale,
        )
    )


@register_reward("novelty")
class NoveltyReward(RewardModule):
    """Fraction of a new frame's patches unlike every patch seen earlier in the episode.

    A patch is novel when the distance from its descriptor (:func:`patch_embeddings`) to the
    nearest descriptor in the episode's memory exceeds ``threshold``. Repeating a frame scores
    ~0 (its patches are in memory); a region with other structure, or the same region at
    another magnification, scores > 0. Non-frame results score 0.

    Args:
        threshold: Descriptor distance above which a patch is novel [dimensionless]. On the
            twin (graphene, 16 nm, 256²) repeats of one region at 1–16 µs dwell lie 0.08
            (median) to 0.12 (90th percentile) from the first frame, as does pristine lattice
            50 nm away (nothing new to see); the same region at twice the field of view lies
            at 0.5, a hole edge at 0.35 (78 % of its patches beyond 0.25) and the edge of a
            contamination patch mostly below (6 % beyond).
        grid_px: Side of the resampled frame [px].
        patch_px: Side of a patch [px].
        scale_weight: Weight of the magnification coordinate [1/octave].
        max_memory: Most patch descriptors remembered; the oldest are forgotten first.

    """

    requires_ground_truth = False

    def __init__(
        self,
        threshold: float = 0.25,
        grid_px: int = 64,
        patch_px: int = 8,
        scale_weight: float = 0.5,
        max_memory: int = 16_384,
    ) -> None:
        if grid_px % patch_px:
            raise ValueError(f"patch_px = {patch_px} must divide grid_px = {grid_px}")
        self.threshold = float(threshold)
        self.grid_px = int(grid_px)
        self.patch_px = int(patch_px)
        self.scale_weight = float(scale_weight)
        self.max_memory = int(max_memory)
        self._memory = np.zeros((0, 12))

    def reset(self) -> None:
        """Forget every patch."""
        self._memory = np.zeros((0, 12))

    def _novel_fraction(self, patches: np.ndarray) -> float:
        if len(self._memory) == 0:
            return 1.0
        nearest = _nearest_distance(patches, self._memory)
        return float(np.mean(nearest > self.threshold))

    def novel_fraction(self, frame: Frame) -> float:
        """Fraction of the frame's patches farther than the threshold from memory [0, 1].

        Does not change the memory.
        """
        return self._novel_fraction(
            patch_embeddings(frame, self.grid_px, self.patch_px, self.scale_weight)
        )

    def __call__(self, ctx: StepContext) -> float:
        """Novel fraction of a frame [0, 1]; 0 for other results."""
        if not isinstance(ctx.result, Frame):
            return 0.0
        patches = patch_embeddings(ctx.result, self.grid_px, self.patch_px, self.scale_weight)
        value = self._novel_fraction(patches)
        self._memory = np.concatenate((self._memory, patches))[-self.max_memory :]
        return value


def _nearest_distance(queries: np.ndarray, memory: np.ndarray) -> np.ndarray:
    squared = (
        np.sum(queries**2, axis=1)[:, None]
        + np.sum(memory**2, axis=1)[None, :]
        - 2.0 * queries @ memory.T
    )
    return np.asarray(np.sqrt(np.maximum(squared.min(axis=1), 0.0)))


# -- quality ------------------------------------------------------------------------------


def _immerkaer_noise_sigma(image: np.ndarray) -> float:
    """Standard deviation of white noise in an image (Immerkær 1996, CVIU 64, 300–302).

    The mask [[1, −2, 1], [−2, 4, −2], [1, −2, 1]] is the difference of two Laplacians, so it
    cancels smooth structure and leaves mostly noise; for Gaussian noise the mean absolute
    response is sqrt(2/π) · 6 σ.
    """
    rows, cols = image.shape
    if rows < 3 or cols < 3:
        return 0.0
    c = image
    response = (
        c[:-2, :-2]
        + c[:-2, 2:]
        + c[2:, :-2]
        + c[2:, 2:]
        - 2.0 * (c[:-2, 1:-1] + c[2:, 1:-1] + c[1:-1, :-2] + c[1:-1, 2:])
        + 4.0 * c[1:-1, 1:-1]
    )
    return float(math.sqrt(math.pi / 2.0) * np.mean(np.abs(response)) / 6.0)


@dataclass(frozen=True)
class FrameQuality:
    """Image-quality estimates of one frame (see :func:`frame_quality`).

    Attributes:
        snr: Signal standard deviation over noise standard deviation per pixel
            [dimensionless].
        contrast: Signal standard deviation over the mean signal above the dark level
            [dimensionless].

    """

    snr: float
    contrast: float


def frame_quality(frame: Frame, resolution_nm: float = 0.02) -> FrameQuality:
    """Estimate a frame's signal-to-noise ratio and contrast from the frame alone.

    The frame is first binned to pixels of at least ``resolution_nm`` (per-pixel noise of a
    finely sampled frame says little about what it shows). The noise is estimated with
    Immerkær's Laplacian-difference mask, the signal variance as the frame variance less the
    noise variance. Contrast is the signal standard deviation over the mean above a dark level,
    the 1st percentile of the frame smoothed by one pixel: defocus blurs atoms into the gaps
    between them and lowers it whatever the dose.

    Args:
        frame: The frame.
        resolution_nm: Smallest pixel the estimate works at [nm].

    Returns:
        (snr, contrast), both >= 0 [dimensionless].

    """
    image = np.asarray(frame.counts, dtype=np.float64)
    factor = max(1, int(resolution_nm / frame.pixel_nm))
    if factor > 1 and image.shape[0] >= 3 * factor:
        size = image.shape[0] // factor
        image = image[: size * factor, : size * factor]
        image = image.reshape(size, factor, size, factor).mean(axis=(1, 3))
    noise = _immerkaer_noise_sigma(image)
    signal_var = max(float(image.var()) - noise * noise, 0.0)
    signal = math.sqrt(signal_var)
    snr = signal / noise if noise > 0 else (math.inf if signal > 0 else 0.0)
    dark = float(np.percentile(ndimage.gaussian_filter(image, 1.0), 1.0))
    above_dark = float(image.mean()) - dark
    contrast = signal / above_dark if above_dark > 0 else 0.0
    return FrameQuality(snr=snr, contrast=contrast)


@register_reward("quality")
class QualityReward(RewardModule):
    """Image quality of a frame from the frame alone: SNR and contrast combined in [0, 1].

    reward = w_snr · tolerance(snr, (snr_good, ∞), margin=snr_good)
    + w_contrast · tolerance(contrast, (contrast_good, ∞), margin=contrast_good), both with
    the linear shape falling to 0 at zero, i.e. each term is min(value / good, 1). On the twin
    (graphene, 4.5 nm field of view, 256² pixels, 60 kV, 30 mrad, 30 pA): SNR 0.26 / 0.49 /
    0.88 / 1.66 at 1 / 4 / 16 / 64 µs dwell in focus, 0.60 and 0.16 at 16 µs with 3 and 6 nm
    defocus; contrast 0.91–0.98 in focus from 16 µs on, 0.27–0.46 at 6 nm defocus and 0.1–0.3
    at 12 nm. Frames with almost no signal read SNR ~0.2 and contrast ~0.3 (estimator bias),
    a uniform field less. Non-frame results score 0.

    Args:
        snr_good: SNR that earns the full SNR term [dimensionless].
        contrast_good: Contrast that earns the full contrast term [dimensionless].
        weights: (w_snr, w_contrast); they should sum to 1 to keep the reward in [0, 1].
        resolution_nm: Smallest pixel the estimate works at [nm].

    """

    requires_ground_truth = False

    def __init__(
        self,
        snr_good: float = 1.5,
        contrast_good: float = 0.9,
        weights: tuple[float, float] = (0.5, 0.5),
        resolution_nm: float = 0.02,
    ) -> None:
        self.snr_good = float(snr_good)
        self.contrast_good = float(contrast_good)
        self.weights = (float(weights[0]), float(weights[1]))
        self.resolution_nm = float(resolution_nm)

    def score(self, frame: Frame) -> float:
        """Quality of one frame [0, 1 with weights summing to 1]."""
        quality = frame_quality(frame, self.resolution_nm)
        snr, contrast = quality.snr, quality.contrast
        snr_term = tolerance(
            snr, (self.snr_good, math.inf), self.snr_good, "linear", value_at_margin=0.0
        )
        contrast_term = tolerance(
            contrast, (self.contrast_good, math.inf), self.contrast_good, "linear", 0.0
        )
        return self.weights[0] * snr_term + self.weights[1] * contrast_term

    def __call__(self, ctx: StepContext) -> float:
        """Quality of a frame [0, 1]; 0 for other results."""
        if not isinstance(ctx.result, Frame):
            return 0.0
        return self.score(ctx.result)


# -- atom finding -------------------------------------------------------------------------


@register_reward("atom_finding")
class AtomFindingReward(RewardModule):
    """Seed 004's physics rewards of the atoms found in a frame, with no ground truth.

    For every frame fine enough to resolve the lattice (pixel <= ``max_pixel_nm``) the LoG
    finder is tuned on the frame (:func:`~scopegym.rewards.atoms.optimise_atom_finder`, ~0.2 s
    for 256²) or run with fixed ``params``, and the reward is w_qc (1 − QC) + w_er (1 − ER) +
    w_lat · regularity · completeness^(1 + coordination)
    (:func:`~scopegym.rewards.atoms.score_atoms`), in [0, 1] with the default weights. It is
    high for sharp, well-exposed atomic-resolution frames of the expected lattice and falls with
    noise, blur, contamination and holes, and with atoms the tuned finder misses. QC and ER can
    be met by thresholding noise, so only the lattice term separates a lattice from noise: on
    the twin (4.5 nm, 256², in focus) graphene scores 1.00 at 32 µs, 0.97 at 8 µs, 0.74 at 2 µs
    and 0.69 at 0.2 µs; at 32 µs, 1.00 / 0.75 / 0.70 with 3 / 6 / 12 nm defocus; a frame of
    vacuum 0.70 (regularity ~0.2). Raise ``w_lat`` to widen that gap. Coarser frames and
    non-frame results score 0.

    Args:
        atoms_per_nm2: Areal density of atom columns [1/nm²]; graphene 38.2.
        bond_nm: Nearest-neighbour distance [nm]; graphene 0.142.
        coordination: Most neighbours of a lattice atom; None skips the check.
        symmetry: Rotational order of the bonds around an atom (3 for a honeycomb); None skips
            the bond-orientational check (see :class:`~scopegym.rewards.atoms.LatticePrior`).
        weights: (w_qc, w_er, w_lat) [dimensionless].
        optimise: Tune the finder on every frame; False uses ``params``.
        params: Fixed finder parameters when ``optimise`` is False (defaults if None).
        budget: Evaluations of the optimiser per frame.
        max_pixel_nm: Largest pixel that is scored [nm].

    """

    requires_ground_truth = False

    def __init__(
        self,
        atoms_per_nm2: float = GRAPHENE_ATOMS_PER_NM2,
        bond_nm: float = GRAPHENE_BOND_NM,
        coordination: int | None = 3,
        symmetry: int | None = 3,
        weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
        optimise: bool = True,
        params: LoGParams | None = None,
        budget: int = 60,
        max_pixel_nm: float = 0.05,
    ) -> None:
        self.prior = LatticePrior(
            atoms_per_nm2=atoms_per_nm2,
            bond_nm=bond_nm,
            coordination=coordination,
            symmetry=symmetry,
            weights=(float(weights[0]), float(weights[1]), float(weights[2])),
        )
        self.optimise = bool(optimise)
        self.params = params or LoGParams()
        self.budget = int(budget)
        self.max_pixel_nm = float(max_pixel_nm)
        self.last_params: LoGParams | None = None
        self.last_score: AtomFindingScore | None = None

    def reset(self) -> None:
        """Forget the last frame's parameters and score (kept for logging only)."""
        self.last_params = None
        self.last_score = None

    def score(self, frame: Frame) -> AtomFindingScore:
        """Physics rewards of the atoms found in one frame."""
        counts = np.asarray(frame.counts)
        if self.optimise:
            params, score = optimise_atom_finder(
                counts, frame.pixel_nm, budget=self.budget, prior=self.prior
            )
        else:
            params = self.params
            extent = (counts.shape[1] * frame.pixel_nm, counts.shape[0] * frame.pixel_nm)
            score = score_atoms(find_atoms(counts, frame.pixel_nm, params), extent, self.prior)
        self.last_params, self.last_score = params, score
        return score

    def __call__(self, ctx: StepContext) -> float:
        """Physics reward of a frame [0, 1]; 0 for coarse frames and other results."""
        frame = ctx.result
        if not isinstance(frame, Frame) or frame.pixel_nm > self.max_pixel_nm:
            return 0.0
        return self.score(frame).reward
