"""A model-based SpectrumDiscovery route: a classifier reading the frame for where spectra differ.

A heavy dopant or an adatom is brighter than the lattice in a HAADF frame (Z-contrast), a
vacancy darker, a grain boundary breaks the lattice's periodicity, vacuum and contamination are
smooth; a 20 ms spectrum alone hardly tells a point defect from the lattice, so where to put the
probe is a question about the frame. :func:`position_features` describes what the frame shows
around every spectrum grid position (:data:`FEATURES`), and :class:`SignatureLocator`, a small
network, maps those numbers to the probabilities of the signature classes a spectrum there would
record (:data:`LOCATOR_CLASSES`). It is trained on the twin's ground-truth classes by
``scripts/train_signature_locator.py``; deployed, it reads only the observation.

:class:`SignatureLocatorPolicy` picks, at every step, the grid position not measured yet with the
highest expected number of new classes: with ``p_k(c)`` the locator's probability of class
``c`` at position ``k``, and the measured positions ``V`` from the observation's ``spectra``
entry, it maximises ``sum_c p_k(c) * prod_{v in V} (1 - p_v(c))``: the chance that a spectrum at
``k`` records a class that none of the measured ones is expected to have recorded; ties (the
episode's first spectrum) go to the position least likely to be plain lattice
(:func:`choice_scores`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableMultiInputActorCriticPolicy
from scipy import ndimage
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from scopegym.agents.baselines import ScriptedPolicy

#: Signature classes the locator tells apart, in its output order. ``dopant`` stands for every
#: ``dopant:<element>`` class and ``lattice`` for every ``lattice:<family>`` class of the twin's
#: ``signature_at``.
LOCATOR_CLASSES: tuple[str, ...] = (
    "lattice",
    "vacuum",
    "contamination",
    "dopant",
    "vacancy",
    "edge",
    "grain_boundary",
    "adatom",
)

#: Distance within which a point defect dominates a spectrum (the ``signatures`` reward's
#: ``radius_nm``), and so the neighbourhood of a probe position that decides its class [nm].
PROBE_REACH_NM = 0.2
#: Smoothing of the frame before its extremes are taken: a fraction of an atom's image [nm].
SMOOTHING_NM = 0.08
#: Fraction of Fourier components kept as the frame's periodic (lattice) part.
LATTICE_FRACTION = 0.005
#: Scales of the context around a position [nm].
CONTEXT_SCALES_NM: tuple[float, ...] = (0.5, 1.0, 2.0)
#: The numbers :func:`position_features` gives per position, in order.
FEATURES: tuple[str, ...] = (
    "brightest",
    "darkest",
    "mean",
    "residual_brightest",
    "residual_darkest",
    "residual_power",
    *(
        f"{name}_{scale:g}nm"
        for scale in CONTEXT_SCALES_NM
        for name in ("mean", "texture", "residual_rms")
    ),
    "brightest_rank",
    "darkest_rank",
    "frame_p99",
    "frame_p01",
    "frame_lattice_strength",
)

#: The shipped weights.
DEFAULT_WEIGHTS = Path(__file__).parent / "data" / "signature_locator.pt"


def locator_class(signature: str) -> int:
    """Index in :data:`LOCATOR_CLASSES` of a signature from the twin's ``signature_at``.

    Raises:
        ValueError: A signature the locator has no class for.
    """
    kind = signature.split(":", 1)[0]
    if kind not in LOCATOR_CLASSES:
        raise ValueError(f"no locator class for signature {signature!r}; known {LOCATOR_CLASSES}")
    return LOCATOR_CLASSES.index(kind)


def grid_signatures(truth: Any, grid: int) -> list[list[str]]:
    """The twin's signature at every spectrum grid position of the present field (labels).

    For training and checking the locator, never for acting: it reads the ground truth.

    Args:
        truth: The twin's ground truth (``env.unwrapped.truth``): ``view_bounds_nm()`` and
            ``signature_at(x_nm, y_nm)``.
        grid: Spectrum positions per axis.

    Returns:
        Rows (y) of columns (x): the signature a spectrum at ``((x + 0.5) / grid, (y + 0.5) /
        grid)`` of the true field of view records, as the ``signatures`` reward classifies it.
    """
    x0, y0, x1, y1 = truth.view_bounds_nm()
    centres = (np.arange(grid) + 0.5) / grid
    return [
        [truth.signature_at(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u in centres]
        for v in centres
    ]


def lattice_part(image: np.ndarray, fraction: float = LATTICE_FRACTION) -> np.ndarray:
    """The periodic part of an image: its strongest Fourier components only.

    A crystal puts its power into a few Bragg spots; a point defect, a vacancy or a grain
    boundary spreads its power thinly over all frequencies. Keeping the strongest ``fraction``
    of the components (the mean left out) rebuilds the perfect lattice, and the image minus it
    shows what breaks the periodicity, whatever the crystal.

    Args:
        image: Two-dimensional image [any linear scale].
        fraction: Fraction of Fourier components kept [dimensionless].
    """
    spectrum = np.fft.fft2(image)
    power = np.abs(spectrum)
    power[0, 0] = 0.0
    strong = power >= np.quantile(power, 1.0 - fraction)
    return np.real(np.fft.ifft2(np.where(strong, spectrum, 0.0)))


def position_features(frame: np.ndarray, grid: int, field_nm: float) -> np.ndarray:
    """What the frame shows around every spectrum grid position, as :data:`FEATURES` numbers.

    The frame is standardised (mean 0, standard deviation 1) and split into its lattice part
    (:func:`lattice_part`) and the residual. Around each probe position ``(x + 0.5) / grid`` of
    the field: the brightest and darkest value of the lightly smoothed frame and of the residual
    within :data:`PROBE_REACH_NM`, and their means there; the frame's mean and texture and the
    residual's strength over 0.5, 1 and 2 nm (vacuum, contamination, edges and grain boundaries
    are larger than a point); the position's rank among all positions by its brightest and by
    its darkest value (an outlier is relative to its field); and three numbers of the whole
    frame (its 99th and 1st percentiles and the lattice part's strength).

    Args:
        frame: HAADF frame with two trailing image axes [uint8 levels or any linear scale].
        grid: Spectrum positions per axis.
        field_nm: Side of the frame's field of view [nm].

    Returns:
        Array ``(grid * grid, len(FEATURES))``, rows ``y * grid + x`` [frame standard
        deviations, or dimensionless ranks].
    """
    image = np.asarray(frame, dtype=np.float64)
    image = image.reshape(image.shape[-2], image.shape[-1])
    size = image.shape[-1]
    pixel_nm = field_nm / size
    z = (image - image.mean()) / (image.std() + 1e-6)
    lattice = lattice_part(z)
    smooth = ndimage.gaussian_filter(z, SMOOTHING_NM / pixel_nm)
    residual = ndimage.gaussian_filter(z - lattice, SMOOTHING_NM / pixel_nm)
    reach = max(1, round(PROBE_REACH_NM / pixel_nm))
    disc = np.hypot(*np.mgrid[-reach : reach + 1, -reach : reach + 1]) <= reach
    maps = [
        ndimage.maximum_filter(smooth, footprint=disc),
        ndimage.minimum_filter(smooth, footprint=disc),
        ndimage.uniform_filter(smooth, 2 * reach + 1),
        ndimage.maximum_filter(residual, footprint=disc),
        ndimage.minimum_filter(residual, footprint=disc),
        ndimage.uniform_filter(residual**2, 2 * reach + 1),
    ]
    for scale_nm in CONTEXT_SCALES_NM:
        sigma = scale_nm / pixel_nm
        mean = ndimage.gaussian_filter(z, sigma)
        variance = ndimage.gaussian_filter(z**2, sigma) - mean**2
        maps += [
            mean,
            np.sqrt(np.maximum(variance, 0.0)),
            np.sqrt(ndimage.gaussian_filter((z - lattice) ** 2, sigma)),
        ]
    centres = (np.arange(grid) + 0.5) / grid * size - 0.5
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    local = np.stack(
        [ndimage.map_coordinates(m, [rows, cols], order=1, mode="nearest").ravel() for m in maps],
        axis=1,
    )
    count = len(local)
    brightest_rank = np.argsort(np.argsort(local[:, 0], kind="stable"), kind="stable") / count
    darkest_rank = np.argsort(np.argsort(-local[:, 1], kind="stable"), kind="stable") / count
    whole = np.array([np.quantile(z, 0.99), np.quantile(z, 0.01), lattice.std()])
    return np.hstack(
        [local, brightest_rank[:, None], darkest_rank[:, None], np.tile(whole, (count, 1))]
    )


class SignatureLocator(nn.Module):
    """Per-position features (:func:`position_features`) to signature-class logits.

    A multilayer perceptron on the features standardised with the training set's mean and
    standard deviation (buffers, saved with the weights).

    Args:
        hidden: Width of the two hidden layers.
        classes: Number of classes.
    """

    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, hidden: int = 64, classes: int = len(LOCATOR_CLASSES)) -> None:
        super().__init__()
        self.hidden = int(hidden)
        self.register_buffer("feature_mean", torch.zeros(len(FEATURES)))
        self.register_buffer("feature_std", torch.ones(len(FEATURES)))
        self.body = nn.Sequential(
            nn.Linear(len(FEATURES), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def set_normalisation(self, features: np.ndarray) -> None:
        """Standardise inputs by these (training) features' mean and standard deviation."""
        flat = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
        self.feature_mean.copy_(torch.as_tensor(flat.mean(axis=0), dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(flat.std(axis=0) + 1e-6, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits ``(..., classes)`` from features ``(..., len(FEATURES))``."""
        return self.body((features.float() - self.feature_mean) / self.feature_std)


def save_locator(model: SignatureLocator, path: str | Path, meta: Mapping[str, Any]) -> None:
    """Save a locator's weights (float32: the file is ~25 kB) with metadata.

    Args:
        model: The trained locator.
        path: Output file (``.pt``).
        meta: Extra entries stored beside the weights (training figures, the command).
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hidden": model.hidden, **dict(meta)}, Path(path))


def load_locator(path: str | Path | None = None) -> SignatureLocator:
    """Load a locator saved by :func:`save_locator`, in eval mode.

    Args:
        path: Weights file; None: the shipped ``data/signature_locator.pt``.
    """
    blob = torch.load(Path(path or DEFAULT_WEIGHTS), map_location="cpu", weights_only=True)
    model = SignatureLocator(hidden=int(blob.get("hidden", 64)))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model


def class_probabilities(
    model: SignatureLocator, frame: np.ndarray, grid: int, field_nm: float
) -> np.ndarray:
    """The locator's class probabilities at every grid position of one frame.

    Args:
        model: A loaded locator.
        frame: The frame, two trailing image axes [uint8 levels].
        grid: Spectrum positions per axis.
        field_nm: Side of the frame's field of view [nm].

    Returns:
        Array ``(grid * grid, classes)``, rows ``y * grid + x``, each row summing to 1.
    """
    features = torch.from_numpy(position_features(frame, grid, field_nm))
    with torch.no_grad():
        probabilities = model(features).softmax(dim=-1)
    return probabilities.numpy().astype(np.float64)


def expected_new_classes(probabilities: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Expected number of classes a spectrum at each position records that none measured did.

    Args:
        probabilities: ``(positions, classes)`` class probabilities per position.
        measured: Boolean ``(positions,)``: positions that hold a spectrum already.

    Returns:
        ``(positions,)`` expected new classes [classes]; measured positions get -1.
    """
    unseen = np.prod(1.0 - probabilities[measured], axis=0)
    gain = probabilities @ unseen
    return np.where(measured, -1.0, gain)


#: Weight in the choice of a position's chance of holding anything but the lattice, far below
#: any real difference in expected new classes: it decides ties. The episode's first spectrum is
#: one: with nothing measured every position adds one class in expectation (its probabilities
#: sum to 1), and float rounding chose it (the published locator row moved from 1.52 to 1.56
#: signatures between two runs of the same code and weights) [classes].
TIE_BREAK = 1e-3


def choice_scores(probabilities: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """What the locator maximises: :func:`expected_new_classes` with ties broken by rarity.

    Args:
        probabilities: ``(positions, classes)`` class probabilities per position, the lattice
            first (:data:`LOCATOR_CLASSES`).
        measured: Boolean ``(positions,)``: positions that hold a spectrum already.

    Returns:
        ``(positions,)`` expected new classes plus :data:`TIE_BREAK` times the chance of a
        class other than the lattice [classes]; measured positions get -1.
    """
    gain = expected_new_classes(probabilities, measured) + TIE_BREAK * (1.0 - probabilities[:, 0])
    return np.where(measured, -1.0, gain)


class SignatureLocatorPolicy(ScriptedPolicy):
    """Spectra where the :class:`SignatureLocator` expects classes not yet recorded.

    Reads the frame and the ``spectra`` entry of a SpectrumDiscovery-v1 observation, and the
    field of view the instrument reports; computes the features and the classifier once per
    frame (~30 ms on one core for 128 px). Deterministic: ties in expected new classes go to
    the position least likely to be lattice (:func:`choice_scores`), exact ties to the lowest
    row ``y * grid + x``. With no ``spectra`` entry (the v0 interface) it remembers the positions
    it chose itself. After every position has been measured it starts over.

    Args:
        env: A SpectrumDiscovery environment.
        weights: Weights file saved by ``scripts/train_signature_locator.py``; None: the
            shipped ``data/signature_locator.pt``.
    """

    name: ClassVar[str] = "signature_locator"

    def __init__(self, env: gym.Env[Any, Any], weights: str | Path | None = None) -> None:
        super().__init__(env)
        torch.set_num_threads(1)
        self.model = load_locator(weights)

    def _script(self) -> Iterator[np.ndarray]:
        if "spectrum" not in self.config.verbs:
            while True:
                yield self.fallback(self.masks)
        grid = self.config.spectrum_grid
        chosen = np.zeros(grid * grid, dtype=bool)
        frame: np.ndarray | None = None
        probabilities = np.zeros((grid * grid, len(LOCATOR_CLASSES)))
        while True:
            latest = np.asarray(self.observation["frame"])
            if frame is None or not np.array_equal(latest, frame):
                frame = latest.copy()
                field_nm = self.instrument_state.fov_nm
                probabilities = class_probabilities(self.model, frame, grid, field_nm)
            spectra = self.observation.get("spectra")
            measured = chosen if spectra is None else np.asarray(spectra).reshape(-1) > 0.5
            if measured.all():
                chosen[:] = False
                measured = np.zeros_like(measured)
            best = int(np.argmax(choice_scores(probabilities, measured)))
            chosen[best] = True
            yield self.action("spectrum", x=best % grid, y=best // grid)


#: Logit given to a position that already holds a spectrum: the log of an expected gain far
#: below any unmeasured position's [log classes].
MEASURED_SCORE = float(np.log(1e-6))


class PositionScoreExtractor(BaseFeaturesExtractor):
    """SpectrumDiscovery features for a policy that points at grid positions: one score each.

    The locator's computation (:func:`position_features`, :class:`SignatureLocator`,
    :func:`choice_scores`) as a network whose class model learns: for every grid
    position, the fixed frame features go through the per-position class network, and the
    expected number of classes a spectrum there would add, given the positions the
    observation's ``spectra`` marks as measured, is computed differentiably. The features are
    the log of that gain, ties broken as :func:`choice_scores` does, at every position
    (:data:`MEASURED_SCORE` where a spectrum exists),
    ordered as :class:`~scopegym.envs.JointActions` orders the Spectrum commands (x-major:
    command ``x * grid + y``), then four numbers of the whole field for the value head (the
    fraction measured, the largest gain, the mean gain, the expected classes recorded so far
    over the number of classes).

    The frame features are a fixed function of the frame (~30 ms for 128 px on one core),
    computed once per distinct frame and cached (a SpectrumDiscovery episode keeps its frame);
    gradients flow through the class network and the gain only. Plain torch and NumPy.

    Args:
        observation_space: A SpectrumDiscovery-v1 observation space (``frame`` and
            ``spectra``).
        field_nm: Side of the task's frame [nm] (SpectrumDiscovery-v1: 8).
        init: ``"locator"``: start from the shipped locator's weights (trained on the twin's
            classes); ``"random"``: a freshly initialised class network (only the feature
            standardisation is taken from the shipped file).
        weights: Locator weights file (None: the shipped ``data/signature_locator.pt``).
        hidden: Width of the class network's hidden layers (``init="random"`` only; the
            shipped locator's is 64).
        cache_size: Frames whose features are kept (46 kB each for a 24 x 24 grid; a PPO
            rollout of 480 steps holds 20 frames).

    Raises:
        ValueError: An observation space without ``frame`` and a square ``spectra`` grid, or
            an unknown ``init``.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        field_nm: float = 8.0,
        init: str = "locator",
        weights: str | None = None,
        hidden: int = 64,
        cache_size: int = 512,
    ) -> None:
        if "frame" not in observation_space.spaces or "spectra" not in observation_space.spaces:
            raise ValueError("PositionScoreExtractor reads 'frame' and 'spectra' observations")
        positions = int(np.prod(observation_space["spectra"].shape or (0,)))
        grid = round(positions**0.5)
        if grid * grid != positions:
            raise ValueError(f"'spectra' holds {positions} positions, not a square grid")
        if init not in ("locator", "random"):
            raise ValueError(f"init={init!r}: expected 'locator' or 'random'")
        super().__init__(observation_space, features_dim=positions + 4)
        self.grid = grid
        self.field_nm = float(field_nm)
        self.cache_size = int(cache_size)
        shipped = load_locator(weights)
        if init == "locator":
            self.locator = shipped
        else:
            self.locator = SignatureLocator(hidden=hidden)
            self.locator.feature_mean.copy_(shipped.feature_mean)
            self.locator.feature_std.copy_(shipped.feature_std)
        self.locator.train()
        self._cache: dict[bytes, torch.Tensor] = {}

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """:func:`position_features` of each frame, ``(batch, positions, len(FEATURES))``."""
        rows = []
        for frame in frames.detach().cpu().numpy():
            key = hashlib.blake2b(np.ascontiguousarray(frame).tobytes(), digest_size=16).digest()
            cached = self._cache.get(key)
            if cached is None:
                if len(self._cache) >= self.cache_size:
                    self._cache.clear()
                features = position_features(frame, self.grid, self.field_nm)
                cached = torch.as_tensor(features, dtype=torch.float32)
                self._cache[key] = cached
            rows.append(cached)
        return torch.stack(rows).to(frames.device)

    def forward(self, observations: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Scores of every command and the four field numbers, ``(batch, positions + 4)``."""
        probabilities = self.locator(self.frame_features(observations["frame"])).softmax(-1)
        measured = (observations["spectra"].reshape(len(probabilities), -1) > 0.5).float()
        # Chance that no measured position recorded class c: prod over measured of (1 - p).
        log_absent = torch.log1p(-probabilities.clamp(max=1 - 1e-6))
        log_unseen = (measured.unsqueeze(-1) * log_absent).sum(1)
        unseen = log_unseen.exp()
        gain = (probabilities * unseen.unsqueeze(1)).sum(-1)
        choice = gain + TIE_BREAK * (1.0 - probabilities[..., 0])
        scores = torch.where(
            measured > 0, torch.full_like(gain, MEASURED_SCORE), torch.log(choice + 1e-6)
        )
        grid = self.grid
        by_command = scores.reshape(-1, grid, grid).transpose(1, 2).reshape(len(scores), -1)
        summary = torch.stack(
            [
                measured.mean(1),
                gain.max(1).values,
                gain.mean(1),
                1.0 - unseen.mean(1),
            ],
            dim=1,
        )
        return torch.cat([by_command, summary], dim=1)


class LeadingScores(nn.Module):
    """Action logits: the first ``count`` features times a learnt inverse temperature.

    Args:
        count: Number of actions (the leading features are their scores).
        inverse_temperature: Initial factor [1 / log classes].
    """

    def __init__(self, count: int, inverse_temperature: float = 4.0) -> None:
        super().__init__()
        self.count = int(count)
        initial = torch.tensor(float(np.log(inverse_temperature)))
        self.log_inverse_temperature = nn.Parameter(initial)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, count)`` from a latent whose first ``count`` values are scores."""
        return latent[..., : self.count] * self.log_inverse_temperature.exp()


class PositionScorePolicy(MaskableMultiInputActorCriticPolicy):
    """MaskablePPO policy whose action logits are the extractor's per-command scores.

    For :class:`PositionScoreExtractor` on whole commands (``agent.joint_actions``): the
    policy's distribution over positions is a softmax of the scores (:class:`LeadingScores`),
    so the argmax is the position the class network expects the most new classes at, and
    learning moves the class network rather than a 580 x 576 matrix. Give it
    ``net_arch=dict(pi=[], vf=[...])`` so the policy latent is the features themselves, and
    ``ortho_init=False`` to keep the extractor's initial weights.
    """

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        count = int(self.action_space.n)  # type: ignore[attr-defined]
        if self.mlp_extractor.latent_dim_pi < count:
            raise ValueError(
                f"PositionScorePolicy needs the {count} command scores as the policy latent "
                f"(net_arch pi=[]); the latent has {self.mlp_extractor.latent_dim_pi} values"
            )
        self.action_net = LeadingScores(count)
        self.optimizer = self.optimizer_class(
            self.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )


__all__ = [
    "DEFAULT_WEIGHTS",
    "FEATURES",
    "LOCATOR_CLASSES",
    "MEASURED_SCORE",
    "LeadingScores",
    "PositionScoreExtractor",
    "PositionScorePolicy",
    "SignatureLocator",
    "SignatureLocatorPolicy",
    "TIE_BREAK",
    "choice_scores",
    "class_probabilities",
    "expected_new_classes",
    "grid_signatures",
    "lattice_part",
    "load_locator",
    "locator_class",
    "position_features",
    "save_locator",
]
