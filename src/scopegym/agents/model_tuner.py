"""A model-based Autotune route: a regressor from Ronchigram pairs to residual aberrations.

A single Ronchigram shows the magnitude of defocus, astigmatism and coma but not their signs;
a pair around a known tune does. :class:`PairRegressor` is a small CNN that maps such a pair
(the bright-field discs of ``ronchigram_previous`` and ``ronchigram``, plus the observation's
``ronchigram_tunes`` and ``ronchigram_detector``) to the probe's total aberrations at the second
Ronchigram: C10, C12a, C12b, C21a and C21b. It is trained on the twin's labels by
``scripts/train_pair_regressor.py``; deployed, it reads only observations.

:class:`PairRegressorTunerPolicy` loops: a probe tune of C10 by +4 nm and a Ronchigram, which
with the Ronchigram before make a pair; estimate the residuals; tune the corrector by minus the
estimate in the task's tune bins; repeat. The next pair's known tune is that correction plus the
probe, so each iteration costs one Ronchigram and the tunes (the regressor is trained on such
pairs as well as on pairs around the probe alone).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from scopegym.agents.baselines import ScriptedPolicy
from scopegym.agents.features import FourierFeatures, SignedLogFeatures
from scopegym.envs.actions import TUNE_SCALE_NM
from scopegym.envs.core import STATE_FEATURES, TUNES_SINCE_SCALES
from scopegym.instrument.aberrations import TUNABLE_ABERRATIONS

#: Aberrations the regressor estimates, in its output order.
PAIR_ABERRATIONS: tuple[str, ...] = ("C10", "C12a", "C12b", "C21a", "C21b")

#: Default label scale per aberration [nm]: Autotune's residual half-ranges.
PAIR_LABEL_SCALE_NM: tuple[float, ...] = (12.0, 5.0, 5.0, 300.0, 300.0)

#: Pixels kept around the Ronchigram's centre: the bright-field disc of the twin's 64² camera
#: (±60 mrad at 30 mrad convergence) spans the central 32².
DISC_CROP_PX = 32

#: The probe tune between a pair's Ronchigrams: (aberration, change [nm]).
PROBE_TUNE: tuple[str, float] = ("C10", 4.0)

#: The shipped weights.
DEFAULT_WEIGHTS = Path(__file__).parent / "data" / "ronchigram_pair_regressor.pt"


def crop_disc(image: np.ndarray, size: int = DISC_CROP_PX) -> np.ndarray:
    """The central ``size``² pixels of an image with two trailing image axes."""
    image = np.asarray(image)
    rows, cols = image.shape[-2], image.shape[-1]
    r0, c0 = (rows - size) // 2, (cols - size) // 2
    return image[..., r0 : r0 + size, c0 : c0 + size]


def pair_inputs(observation: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The regressor's inputs from one AutotuneRonchigram-v2 observation.

    Args:
        observation: The observation (needs ``ronchigram``, ``ronchigram_previous``,
            ``ronchigram_tunes`` and ``ronchigram_detector``).

    Returns:
        (images, scalars): float32 (2, 32, 32) in [0, 1], previous then latest Ronchigram's
        disc; float32 (12,): the tunes between them [8 tune scales] and the encoded detector
        statistics.
    """
    images = np.stack(
        [
            crop_disc(np.asarray(observation["ronchigram_previous"])).reshape(
                DISC_CROP_PX, DISC_CROP_PX
            ),
            crop_disc(np.asarray(observation["ronchigram"])).reshape(DISC_CROP_PX, DISC_CROP_PX),
        ]
    ).astype(np.float32) / np.float32(255.0)
    scalars = np.concatenate(
        [
            np.asarray(observation["ronchigram_tunes"], dtype=np.float32).reshape(-1),
            np.asarray(observation["ronchigram_detector"], dtype=np.float32).reshape(-1),
        ]
    )
    return images, scalars


def _conv_stack(channels: int, width: int, pools: int) -> nn.Sequential:
    """Conv-ReLU(-MaxPool) blocks doubling the width; ``pools`` halvings of the side."""
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
    for k in range(pools):
        layers += [
            nn.Conv2d(width * 2**k, width * 2 ** (k + 1), 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*layers, nn.Flatten())


def _log_power(patches: torch.Tensor) -> torch.Tensor:
    """Log power spectra of (..., n, n) patches, Hann-windowed, centred (zero frequency middle)."""
    n = patches.shape[-1]
    window = torch.hann_window(n, periodic=False, dtype=patches.dtype)
    window = window[:, None] * window[None, :]
    centred = patches - patches.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(centred * window).abs() ** 2
    return torch.fft.fftshift(torch.log1p(power), dim=(-2, -1))


class PairRegressor(nn.Module):
    """Small CNN: a Ronchigram pair and its tune/detector vector to normalised aberrations.

    Three branches read the pair: the two discs themselves; their global log power spectra
    (the shadow image's fringe spacing follows the defocus, its anisotropy the astigmatism);
    and the local log power spectra of 3 × 3 overlapping 16² patches of each disc (coma makes
    the local defocus vary across the disc). Spectra do not depend on where the specimen's
    features fall, which the raw discs do.

    Args:
        scalars: Length of the scalar input (tunes and detector statistics).
        outputs: Number of estimated aberrations.
        width: Channels of the first convolution of each branch (doubled further down).
    """

    def __init__(self, scalars: int = 12, outputs: int = 5, width: int = 16) -> None:
        super().__init__()
        self.images = _conv_stack(2, width // 2, 3)  # 32² → 4²
        self.spectra = _conv_stack(2, width // 2, 3)
        self.local = _conv_stack(18, width, 2)  # 16² → 4²
        features = 2 * (width // 2) * 8 * 16 + width * 4 * 16
        self.head = nn.Sequential(
            nn.Linear(features + scalars, 128),
            nn.ReLU(),
            nn.Linear(128, outputs),
        )

    def forward(self, images: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        """Normalised aberrations (B, outputs) from images (B, 2, 32, 32) and scalars (B, S)."""
        centred = images - images.mean(dim=(2, 3), keepdim=True)
        spectra = _log_power(images)
        patches = images.unfold(2, 16, 8).unfold(3, 16, 8)  # (B, 2, 3, 3, 16, 16)
        local = _log_power(patches).reshape(images.shape[0], 18, 16, 16)
        features = [self.images(centred), self.spectra(spectra), self.local(local), scalars]
        return self.head(torch.cat(features, dim=1))


def save_regressor(model: PairRegressor, path: str | Path, meta: Mapping[str, Any]) -> None:
    """Save a regressor's state_dict with its normalisation constants and metadata.

    Args:
        model: The trained regressor.
        path: Output file (``.pt``).
        meta: Extra entries (``label_scale_nm``, ``width``, training figures, ...).
    """
    state = {k: v.detach().to(torch.float16) for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, **dict(meta)}, Path(path))


def load_regressor(path: str | Path | None = None) -> tuple[PairRegressor, np.ndarray]:
    """Load a regressor saved by :func:`save_regressor`.

    Args:
        path: Weights file; None: the shipped ``data/ronchigram_pair_regressor.pt``.

    Returns:
        (model, scale): the model in eval mode and the label scale [nm] per output, by which
        its outputs are multiplied to give aberrations.
    """
    blob = torch.load(Path(path or DEFAULT_WEIGHTS), map_location="cpu", weights_only=True)
    scale = np.asarray(blob.get("label_scale_nm", PAIR_LABEL_SCALE_NM), dtype=np.float64)
    model = PairRegressor(
        scalars=int(blob.get("scalars", 12)),
        outputs=len(scale),
        width=int(blob.get("width", 16)),
    )
    model.load_state_dict({k: v.to(torch.float32) for k, v in blob["state_dict"].items()})
    model.eval()
    return model, scale


def estimate_aberrations(
    model: PairRegressor, scale: np.ndarray, observation: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """The regressor's estimate of the total aberrations at the latest Ronchigram [nm].

    Args:
        model: A loaded regressor.
        scale: Its label scale per output [nm].
        observation: An AutotuneRonchigram-v2 observation whose two Ronchigrams form the pair.

    Returns:
        Estimated aberrations by name [nm] (:data:`PAIR_ABERRATIONS`).
    """
    images, scalars = pair_inputs(observation)
    with torch.no_grad():
        out = model(torch.from_numpy(images)[None], torch.from_numpy(scalars)[None])
    values = out.numpy().reshape(-1).astype(np.float64) * scale
    return {name: float(v) for name, v in zip(PAIR_ABERRATIONS, values, strict=True)}


#: Tune scales per unit of :class:`PairEstimateExtractor`'s aberration values: a full-range
#: draw (12 nm of C10 at 1 nm, 300 nm of C21 at 20 nm) stays within ±1.
ESTIMATE_RANGE_STEPS = 16.0
#: Octaves of sine/cosine features of those values: the finest period is 1/4 of a tune scale,
#: so the finest bin's half (the tolerance of a correction) is half a period.
ESTIMATE_OCTAVES = 8


class PairEstimateExtractor(BaseFeaturesExtractor):
    """A policy's features from the pair regressor: the aberrations estimated *now*.

    The frozen :class:`PairRegressor` estimates the total aberrations at the latest Ronchigram
    from the observation's pair; adding the corrector change since that Ronchigram
    (``ronchigram_tunes_since``, AutotuneRonchigram-v2) gives the estimate at the present
    settings, which is what the next tune should remove. Features, all within ±1:

    * the present estimate of C10, C12a, C12b, C21a and C21b [16 tune scales of each], with
      sines and cosines of it at :data:`ESTIMATE_OCTAVES` octaves
      (:class:`~scopegym.agents.features.FourierFeatures`): which tune bin comes next turns on
      thresholds a quarter of a tune scale apart, which a plain MLP on the raw value learns
      slowly (cloning ``pair_regressor`` matched 46 % of its steps without them);
    * the tunes since the latest Ronchigram, the same five, encoded the same way (unless
      ``tunes_since`` is false);
    * whether a pair exists yet (a previous Ronchigram) and the observation's ``state`` (or the
      entries of it chosen by ``state_features``).

    The regressor's weights are not trained further (they were fitted to the twin's labels,
    which reinforcement learning does not see); only the policy and value heads on top learn.
    Plain torch, as :class:`~scopegym.agents.features.ScopeFeaturesExtractor`.

    With ``encoding="log"`` the values are given instead as their sign and log magnitude in
    tune scales (:class:`~scopegym.agents.features.SignedLogFeatures`, resolution 1/16, span
    :data:`ESTIMATE_RANGE_STEPS`), so that the bin thresholds are evenly spaced: a clone on
    the Fourier features matched 100 % of its training steps yet only 47 % of the labelled
    steps of its own next episodes, and dithered.

    Args:
        observation_space: An AutotuneRonchigram-v2 observation space.
        weights: Regressor weights (None: the shipped ones).
        encoding: ``"fourier"`` (the features above) or ``"log"``.
        blank_unpaired: Give an estimate of zero before the episode's first pair (the
            regressor's output on a blank previous Ronchigram means nothing, and a clone that
            saw it fitted its opening tunes to it: a clone with it kept sent C10 -4 nm where
            its teacher probes +4, then tuned without a pair). False keeps the behaviour the
            first shipped policy was trained with.
        state_features: Names of the ``state`` entries to pass on
            (:data:`~scopegym.envs.core.STATE_FEATURES`; None: all of them, as the first
            policies were trained). The corrector settings among them differ from episode to
            episode and the loop never reads them; a clone given them can tell its training
            episodes apart by them and learn each one's steps rather than the rule.
        tunes_since: Also give the tunes since the latest Ronchigram on their own. The loop
            reads them only inside the estimate now; alone they are a second route from
            input to action, which along the loop's episodes predicts its steps as well as the
            estimate does and off them does not.

    Raises:
        ValueError: An unknown ``encoding`` or state entry.
        KeyError: The observation lacks an entry the features need (an earlier version).
    """

    REQUIRED: ClassVar[tuple[str, ...]] = (
        "ronchigram",
        "ronchigram_previous",
        "ronchigram_tunes",
        "ronchigram_detector",
        "ronchigram_tunes_since",
        "state",
    )

    def __init__(
        self,
        observation_space: spaces.Dict,
        weights: str | None = None,
        encoding: str = "fourier",
        blank_unpaired: bool = False,
        state_features: Sequence[str] | None = None,
        tunes_since: bool = True,
    ) -> None:
        missing = [key for key in self.REQUIRED if key not in observation_space.spaces]
        if missing:
            raise KeyError(
                f"{type(self).__name__} needs observation entries {missing} "
                "(scopegym/AutotuneRonchigram-v2)"
            )
        encoder: FourierFeatures | SignedLogFeatures
        if encoding == "fourier":
            encoder = FourierFeatures(ESTIMATE_OCTAVES)
            unit = ESTIMATE_RANGE_STEPS
        elif encoding == "log":
            encoder = SignedLogFeatures(ESTIMATE_RANGE_STEPS, 1.0 / 16.0)
            unit = 1.0
        else:
            raise ValueError(f"encoding must be 'fourier' or 'log', got {encoding!r}")
        if state_features is None:
            state_size = int(np.prod(observation_space.spaces["state"].shape or (0,)))
            state_index = list(range(state_size))
        else:
            unknown = [name for name in state_features if name not in STATE_FEATURES]
            if unknown:
                raise ValueError(
                    f"state_features: {unknown} are not state entries; choose from "
                    f"{list(STATE_FEATURES)}"
                )
            state_index = [STATE_FEATURES.index(name) for name in state_features]
        encoded = (2 if tunes_since else 1) * encoder.output_dim(len(PAIR_ABERRATIONS))
        features = encoded + 1 + len(state_index)
        super().__init__(observation_space, features_dim=features)
        self.encoder = encoder
        regressor, scale = load_regressor(weights)
        for parameter in regressor.parameters():
            parameter.requires_grad_(False)
        self.regressor = regressor
        tune_scales_nm = np.array([TUNE_SCALE_NM[name] for name in PAIR_ABERRATIONS])
        steps = unit * tune_scales_nm
        since_nm = TUNES_SINCE_SCALES * tune_scales_nm
        self.label_scale: torch.Tensor
        self.feature_step: torch.Tensor
        self.since_scale: torch.Tensor
        self.register_buffer("label_scale", torch.as_tensor(scale, dtype=torch.float32))
        self.register_buffer("feature_step", torch.as_tensor(steps, dtype=torch.float32))
        self.register_buffer("since_scale", torch.as_tensor(since_nm, dtype=torch.float32))
        self.since_index = [TUNABLE_ABERRATIONS.index(name) for name in PAIR_ABERRATIONS]
        self.blank_unpaired = bool(blank_unpaired)
        self.state_index = state_index
        self.tunes_since = bool(tunes_since)

    def apply(self, fn: Callable[[nn.Module], None]) -> PairEstimateExtractor:
        """Apply ``fn`` to every submodule but the frozen regressor, then to this module.

        SB3 initialises a new policy by applying orthogonal initialisation to its features
        extractor; passed on to the regressor, that would replace its fitted weights with
        random ones (a clone on such features matched 39 % of held-back steps, against 95 %).
        """
        for child in self.children():
            if child is not self.regressor:
                child.apply(fn)
        fn(self)
        return self

    def train(self, mode: bool = True) -> PairEstimateExtractor:
        """Set the training mode; the frozen regressor always stays in evaluation mode."""
        super().train(mode)
        self.regressor.eval()
        return self

    def forward(self, observations: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Features of a batch of observations, (batch, features_dim)."""

        def disc(key: str) -> torch.Tensor:
            image = observations[key]
            # SB3 hands image entries over scaled to [0, 1]; other trainers may pass the uint8.
            image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
            rows, cols = image.shape[-2], image.shape[-1]
            r0, c0 = (rows - DISC_CROP_PX) // 2, (cols - DISC_CROP_PX) // 2
            return image[:, 0, r0 : r0 + DISC_CROP_PX, c0 : c0 + DISC_CROP_PX]

        images = torch.stack([disc("ronchigram_previous"), disc("ronchigram")], dim=1)
        scalars = torch.cat(
            [observations["ronchigram_tunes"].float(), observations["ronchigram_detector"].float()],
            dim=1,
        )
        with torch.no_grad():
            estimate_nm = self.regressor(images, scalars) * self.label_scale
        since = observations["ronchigram_tunes_since"].float()[:, self.since_index]
        since_nm = since * self.since_scale
        paired = (images[:, 0].flatten(1).amax(dim=1, keepdim=True) > 0).float()
        if self.blank_unpaired:
            estimate_nm = estimate_nm * paired
        parts = [self.encoder((estimate_nm + since_nm) / self.feature_step)]
        if self.tunes_since:
            parts.append(self.encoder(since_nm / self.feature_step))
        parts += [paired, observations["state"].float()[:, self.state_index]]
        return torch.cat(parts, dim=1)


class PairRegressorTunerPolicy(ScriptedPolicy):
    """Iterative correction from a Ronchigram-pair regressor.

    Loop until the episode ends: tune the probe (C10 by +4 nm) and take a Ronchigram, so that
    the latest two Ronchigrams bracket a known tune; estimate the total aberrations at the
    second with :class:`PairRegressor`; tune each coefficient by minus its estimate in the
    task's tune bins (the largest bins that do not overshoot; only valid actions). With one
    Ronchigram per iteration (the default), the next pair is the latest Ronchigram and the one
    after the correction and the next probe tune: the known tune between them is the correction
    plus the probe, which the observation's ``ronchigram_tunes`` reports, so an iteration costs
    one Ronchigram (12 ms, ~5e4 e/Å²) and 0.5 s per tune. With two, each pair starts afresh
    with a Ronchigram after the correction and brackets the probe tune alone (the loop of the
    first shipped weights). The estimates' errors shrink with the residuals, so a few
    iterations converge. The probe always adds +4 nm, as in training; the correction takes it
    back with the rest of the estimate.

    Args:
        env: An AutotuneRonchigram-v2 environment (ronchigram and tune verbs, pair observations).
        weights: Weights file saved by ``scripts/train_pair_regressor.py``; None: the shipped
            ``data/ronchigram_pair_regressor.pt``.
        gain: Fraction of the estimate corrected per iteration (dimensionless).
        ronchigrams_per_iteration: 1 or 2 (see above).
        deadband: Remaining corrections smaller than this fraction of the finest tune bin are
            left (0.5: the least that never overshoots). A wider band costs nothing the
            Maréchal budget notices (0.7 of C21's 5 nm bin is 3.5 nm, against the
            regressor's ~50 nm error) and leaves a student that imitates the loop room to
            misplace the threshold without stepping back and forth across it.
        perturb_at_thresholds: Share of the observations :meth:`perturb` makes that put one
            aberration's remaining correction within a fifth of the finest bin of one of the
            loop's thresholds (:meth:`thresholds_nm`), where a student's choice is closest to
            a tie; the rest are tuned at random. Changes nothing the loop itself does.

    Raises:
        ValueError: ``ronchigrams_per_iteration`` is neither 1 nor 2.
    """

    name: ClassVar[str] = "pair_regressor"

    def __init__(
        self,
        env: gym.Env[Any, Any],
        weights: str | Path | None = None,
        gain: float = 1.0,
        ronchigrams_per_iteration: int = 1,
        deadband: float = 0.5,
        perturb_at_thresholds: float = 0.0,
    ) -> None:
        super().__init__(env)
        if ronchigrams_per_iteration not in (1, 2):
            raise ValueError(
                f"ronchigrams_per_iteration must be 1 or 2, got {ronchigrams_per_iteration}"
            )
        torch.set_num_threads(1)
        self.model, self.scale = load_regressor(weights)
        self.gain = float(gain)
        self.ronchigrams_per_iteration = int(ronchigrams_per_iteration)
        if not 0.5 <= deadband < 1.0:
            raise ValueError(f"deadband must be in [0.5, 1), got {deadband}")
        self.tune_deadband = float(deadband)
        if not 0.0 <= perturb_at_thresholds <= 1.0:
            raise ValueError(
                f"perturb_at_thresholds must be in [0, 1], got {perturb_at_thresholds}"
            )
        self.perturb_at_thresholds = float(perturb_at_thresholds)
        #: The latest estimate [nm], for inspection.
        self.estimate: dict[str, float] = {}

    def label(self, observation: Mapping[str, np.ndarray], action_masks: np.ndarray) -> np.ndarray:
        """The action this loop takes next, read from one observation alone.

        On AutotuneRonchigram-v2 the loop's position is in the observation: the regressor's
        estimate at the latest Ronchigram plus the tunes since it (``ronchigram_tunes_since``)
        is the estimate now, whose remaining correction says which tune comes next; the state's
        last entry says whether a tune followed the latest image. So any observation can be
        labelled with the action the loop would take there, including ones the loop itself
        never reaches (those a student's mistakes lead to: dataset aggregation,
        :func:`scopegym.agents.imitation.aggregate`). Along the loop's own episodes it gives the
        actions :meth:`predict` gives (tested).

        Args:
            observation: An AutotuneRonchigram-v2 observation.
            action_masks: The environment's flat action mask.

        Raises:
            KeyError: The observation has no ``ronchigram_tunes_since`` (an earlier version).
        """
        self.observation = dict(observation)
        self.masks = np.asarray(action_masks, dtype=bool).reshape(-1)
        cfg = self.config
        probe_name, probe_nm = PROBE_TUNE
        fresh = float(np.asarray(observation["state"])[-1]) > 0.5
        since_scaled = np.asarray(observation["ronchigram_tunes_since"], dtype=np.float64)

        def since_nm(name: str) -> float:
            scale = TUNES_SINCE_SCALES * cfg.tune_scale_nm.get(name, 1.0)
            return float(since_scaled[TUNABLE_ABERRATIONS.index(name)]) * scale

        if not np.asarray(observation["ronchigram_previous"]).any():
            # No pair yet: the probe, then the Ronchigram that closes the first pair.
            probe = self.tune_toward(probe_name, probe_nm) if fresh else None
            return probe if probe is not None else self.action("ronchigram")
        estimate = estimate_aberrations(self.model, self.scale, observation)
        remaining = {name: -(self.gain * estimate[name]) - since_nm(name) for name in estimate}
        corrections = {name: self.tune_toward(name, remaining[name]) for name in PAIR_ABERRATIONS}
        others_done = all(corrections[n] is None for n in PAIR_ABERRATIONS if n != probe_name)
        probed = abs(remaining[probe_name] + probe_nm) < self.tune_deadband * self.finest_tune_nm(
            probe_name
        )
        if not fresh and others_done and probed:
            return self.action("ronchigram")
        for name in PAIR_ABERRATIONS:
            correction = corrections[name]
            if correction is not None:
                return correction
        probe = self.tune_toward(probe_name, probe_nm)
        return probe if probe is not None else self.action("ronchigram")

    def perturb(
        self, observations: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Observations beside the given ones: the corrector tuned further since the Ronchigram.

        For cloning (:func:`scopegym.agents.imitation.perturbed_steps`): each observation with
        a pair is changed as if, after its latest Ronchigram, each of the five aberrations had
        been tuned by a further random amount (with probability 1/2 each, a magnitude
        log-uniform over 0.06-6.3 tune scales, e.g. 0.06-6.3 nm of C12 and 1.3-126 nm of C21,
        either sign). The pair itself is unchanged, so the regressor's estimate is too; the
        estimate *now* moves by the change, and :meth:`label` says what the loop does there.
        The entries that report the corrector move with it: ``ronchigram_tunes_since``,
        ``tunes_since`` (once there is a frame), the corrector settings in ``state`` and its
        image flag (an image taken before a tune is no longer current). A student's mistakes
        take it to exactly such observations (an estimate left half-corrected, or overshot),
        which its teacher's own episodes rarely show.

        Args:
            observations: AutotuneRonchigram-v2 observation entries, each with a leading step
                axis.
            rng: Source of the random changes.

        Returns:
            The observations, changed where they had a pair, and which rows changed.
        """
        changed = {key: np.array(value, copy=True) for key, value in observations.items()}
        steps = int(changed["state"].shape[0])
        paired = changed["ronchigram_previous"].reshape(steps, -1).any(axis=1)
        state = changed["state"]
        have_frame = state[:, STATE_FEATURES.index("have_frame")] > -0.5
        targeted = np.zeros(steps, dtype=bool)
        if self.perturb_at_thresholds > 0:  # no draw otherwise: the same changes as before it
            targeted = paired & (rng.random(steps) < self.perturb_at_thresholds)

        def tune_since(rows: np.ndarray, name: str, change_nm: np.ndarray) -> None:
            scale_nm = self.config.tune_scale_nm.get(name, 1.0)
            column = TUNABLE_ABERRATIONS.index(name)
            since = change_nm / (TUNES_SINCE_SCALES * scale_nm)
            changed["ronchigram_tunes_since"][rows, column] += since
            if "tunes_since" in changed:
                changed["tunes_since"][rows, column] += since * have_frame[rows]
            state[rows, STATE_FEATURES.index(name)] += change_nm / (8.0 * scale_nm)

        moved = targeted.copy()
        for name in PAIR_ABERRATIONS:
            scale_nm = self.config.tune_scale_nm.get(name, 1.0)
            tuned = paired & ~targeted & (rng.random(steps) < 0.5)
            change_nm = (
                tuned
                * rng.choice([-1.0, 1.0], steps)
                * 10.0 ** rng.uniform(-1.2, 0.8, steps)
                * scale_nm
            )
            tune_since(np.arange(steps), name, change_nm)
            moved |= tuned
        for row in np.flatnonzero(targeted):
            # One aberration's remaining correction put beside one of the loop's thresholds.
            name = PAIR_ABERRATIONS[int(rng.integers(len(PAIR_ABERRATIONS)))]
            targets = self.thresholds_nm(name)
            target = targets[int(rng.integers(len(targets)))]
            target += rng.uniform(-0.2, 0.2) * self.finest_tune_nm(name)
            estimate = estimate_aberrations(
                self.model, self.scale, {key: value[row] for key, value in changed.items()}
            )
            scale_nm = self.config.tune_scale_nm.get(name, 1.0)
            since_nm = (
                float(changed["ronchigram_tunes_since"][row, TUNABLE_ABERRATIONS.index(name)])
                * TUNES_SINCE_SCALES
                * scale_nm
            )
            # remaining = -(gain * estimate) - since, so this since leaves the target.
            wanted_since_nm = -target - self.gain * estimate[name]
            tune_since(np.array([row]), name, np.array([wanted_since_nm - since_nm]))
        for key in ("ronchigram_tunes_since", "tunes_since", "state"):
            if key in changed:
                np.clip(changed[key], -1.0, 1.0, out=changed[key])
        flag = STATE_FEATURES.index("have_frame")
        state[moved, flag] = np.minimum(state[moved, flag], 0.0)
        return changed, moved

    def thresholds_nm(self, name: str) -> list[float]:
        """Remaining corrections [nm] at which the loop's next step for an aberration changes.

        Either side of the deadband, of each larger bin's first use (its size less half the
        finest bin), and, for the probe's aberration, of the probe's band (the remaining
        correction minus the probe, within the deadband, ends the iteration), both signs.
        """
        finest = self.finest_tune_nm(name)
        magnitudes = [self.tune_deadband * finest]
        for k in range(len(self.config.delta_steps)):
            size = abs(self.tune_delta_nm(name, k))
            if size - 0.5 * finest > magnitudes[0]:
                magnitudes.append(size - 0.5 * finest)
        signed = sorted({sign * m for m in magnitudes for sign in (-1.0, 1.0)})
        probe_name, probe_nm = PROBE_TUNE
        if name == probe_name:
            signed += [-probe_nm - magnitudes[0], -probe_nm + magnitudes[0]]
        return signed

    def _ronchigram_if_stale(self) -> Iterator[np.ndarray]:
        """A Ronchigram when the latest image predates the last tune."""
        if float(np.asarray(self.observation["state"])[-1]) <= 0.5:
            yield self.action("ronchigram")

    def _script(self) -> Iterator[np.ndarray]:
        cfg = self.config
        if "tune" not in cfg.verbs or "ronchigram" not in cfg.verbs:
            while True:
                yield self.fallback(self.masks)
        probe_name, probe_nm = PROBE_TUNE
        fresh = True
        while True:
            if fresh:
                yield from self._ronchigram_if_stale()
            yield from self.tune_by(probe_name, probe_nm)
            yield self.action("ronchigram")
            self.estimate = estimate_aberrations(self.model, self.scale, self.observation)
            for name in PAIR_ABERRATIONS:
                yield from self.tune_by(name, -self.gain * self.estimate[name])
            fresh = self.ronchigrams_per_iteration == 2
