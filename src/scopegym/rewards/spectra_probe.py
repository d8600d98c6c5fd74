"""Rewards for probe correction and spectroscopy.

* ``probe_correction`` (twin): the reduction of the probe's RMS phase error, plus a bonus on
  reaching the Maréchal criterion.
* ``signatures`` (twin): +1 for every spectral signature class seen for the first time.
* ``spectral_novelty`` (observation only): how unlike every earlier spectrum a new one is.
"""

from __future__ import annotations

import math

import numpy as np

from scopegym.instrument import EELSSpectrum, Tune
from scopegym.rewards.base import (
    RewardModule,
    StepContext,
    register_reward,
    require_truth,
    true_view_bounds,
)
from scopegym.rewards.primitives import saturating

#: Maréchal criterion for a well-corrected probe: RMS phase error ≤ 2π/14 rad (Strehl ≥ 0.8).
MARECHAL_PHASE_RMS_RAD = 2.0 * math.pi / 14.0

__all__ = [
    "MARECHAL_PHASE_RMS_RAD",
    "ProbeCorrectionReward",
    "SignatureReward",
    "SpectralNoveltyReward",
]


@register_reward("probe_correction")
class ProbeCorrectionReward(RewardModule):
    """Reward for reducing the probe's aberrations.

    (φ_before − φ_after) / ``scale_rad``, clipped to [−1, 1], plus ``bonus`` when a Tune brings
    the RMS phase error φ under the Maréchal limit.

    Args:
        scale_rad: Phase-error reduction worth a reward of 1 [rad].
        bonus: Reward for reaching a well-corrected probe [dimensionless].
    """

    requires_ground_truth = True

    def __init__(self, scale_rad: float = math.pi, bonus: float = 1.0) -> None:
        self.scale_rad = float(scale_rad)
        self.bonus = float(bonus)

    def __call__(self, ctx: StepContext) -> float:
        """Reward of one step [dimensionless]."""
        if not isinstance(ctx.command, Tune):
            return 0.0
        truth = require_truth(self, ctx)
        before = truth.phase_error_rms_rad(ctx.state_before.aberrations_nm)
        after = truth.phase_error_rms_rad()
        reward = float(np.clip((before - after) / self.scale_rad, -1.0, 1.0))
        if after <= MARECHAL_PHASE_RMS_RAD < before:
            reward += self.bonus
        return reward


def _spectrum_position(ctx: StepContext, spectrum: EELSSpectrum) -> tuple[float, float]:
    x0, y0, x1, y1 = true_view_bounds(ctx, ctx.state_before.fov_nm)
    return x0 + spectrum.x * (x1 - x0), y0 + spectrum.y * (y1 - y0)


@register_reward("signatures")
class SignatureReward(RewardModule):
    """+``per_signature`` the first time a spectrum records each signature class.

    Classes come from the twin's ground truth at the probe position: vacuum, contamination,
    ``dopant:<element>``, vacancy, edge, grain boundary, adatom, or the pristine lattice.

    Args:
        per_signature: Reward per new class [dimensionless].
        radius_nm: Distance within which a point defect dominates the spectrum [nm].
    """

    requires_ground_truth = True

    def __init__(self, per_signature: float = 1.0, radius_nm: float = 0.2) -> None:
        self.per_signature = float(per_signature)
        self.radius_nm = float(radius_nm)
        self.seen: set[str] = set()

    def reset(self) -> None:
        """Forget the classes seen."""
        self.seen = set()

    def __call__(self, ctx: StepContext) -> float:
        """Reward of one step [dimensionless]."""
        if not isinstance(ctx.result, EELSSpectrum):
            return 0.0
        truth = require_truth(self, ctx)
        x, y = _spectrum_position(ctx, ctx.result)
        signature = truth.signature_at(x, y, self.radius_nm)
        if signature in self.seen:
            return 0.0
        self.seen.add(signature)
        return self.per_signature


def spectrum_features(
    spectrum: EELSSpectrum, low_eV: float = 50.0, high_eV: float = 600.0, bins: int = 24
) -> np.ndarray:
    """Unit-norm shape of the core-loss region: log counts in ``bins`` bands, trend removed.

    Bands of ~23 eV keep counting noise small: two repeats of a 50 ms graphene spectrum lie
    ~0.2 apart, graphene and vacuum ~1.4.

    Args:
        spectrum: An EELS spectrum.
        low_eV: Lower end of the region [eV].
        high_eV: Upper end of the region [eV].
        bins: Number of bands.
    """
    energy = np.asarray(spectrum.energy_eV)
    keep = (energy >= low_eV) & (energy < high_eV)
    counts = np.maximum(np.asarray(spectrum.counts)[keep], 0.0)
    usable = counts[: (counts.size // bins) * bins]
    if usable.size == 0:
        return np.zeros(bins)
    logs = np.log1p(usable.reshape(bins, -1).mean(1))
    # The power-law background falls steeply; its slope is removed so that edges stand out.
    logs = logs - np.polyval(np.polyfit(np.arange(bins), logs, 1), np.arange(bins))
    norm = float(np.linalg.norm(logs))
    return logs / norm if norm > 0 else logs


@register_reward("spectral_novelty")
class SpectralNoveltyReward(RewardModule):
    """Observation-only discovery for spectra.

    1 − exp(−d / ``scale``), with d the smallest distance between the new spectrum's features
    and those of the episode's earlier spectra.

    Args:
        scale: Feature distance worth a reward of 1 − 1/e [dimensionless].
    """

    requires_ground_truth = False

    def __init__(self, scale: float = 0.6) -> None:
        self.scale = float(scale)

    def __call__(self, ctx: StepContext) -> float:
        """Reward of one step [dimensionless]."""
        if not isinstance(ctx.result, EELSSpectrum):
            return 0.0
        new = spectrum_features(ctx.result)
        earlier = [spectrum_features(s) for s in ctx.history if isinstance(s, EELSSpectrum)]
        if not earlier:
            return 1.0
        distance = min(float(np.linalg.norm(new - e)) for e in earlier)
        return saturating(distance, self.scale)
