"""Scripted probe tuners for Autotune that score frames by the detector's excess variance.

A HAADF frame's sharpness in Fourier space hardly moves with axial coma, but the normalised
excess variance of its raw counts, ``(var - mean) / mean²`` (:mod:`scopegym.envs.detector`),
falls steadily as any aberration grows: the atomic columns lose contrast. Both tuners here
maximise it, reading it from the observation's ``detector`` entry (the statistics of the latest
frame as read out), the instrument's *reported* corrector settings and the task's action
configuration only; neither reads the twin's ground truth. Every corrector change is a sum of
the task's discrete tune bins.

================  ===========================================================================
name              protocol
================  ===========================================================================
pattern_search    a coarse line sweep of each coefficient (C10, C12a, C12b, C21a, C21b) with a
                  least-squares parabola through the best points, then a compass search:
                  probe ±step along each coefficient, averaging more frames as the steps
                  shrink, move to the parabola's vertex when the probes show a clear optimum,
                  halve the step when they do not
bo_tuner          Gaussian-process upper-confidence-bound search (botorch ``SingleTaskGP``, the
                  published correctors' recipe: GP-UCB on normalised image variance) in stages
                  C10, C12 (a, b), C21 (a, b), then C10 and C12 again, each over a grid of
                  settings the tune bins reach within a trust region around the incumbent;
                  needs the ``gp`` extra (``pip install scopegym[gp]``)
================  ===========================================================================
"""

from __future__ import annotations

import importlib
import math
import time
import warnings
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from scopegym.agents.baselines import ScriptedPolicy
from scopegym.envs.detector import decode_detector

#: The coefficients the tuners correct, in the order they are first searched.
TUNED_ABERRATIONS = ("C10", "C12a", "C12b", "C21a", "C21b")

#: A stage of the Bayesian tuner: coefficients, half-widths of the box around the incumbent
#: [nm], grid spacings [nm] (one per coefficient) and the number of acquisitions.
Stage = tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...], int]


#: Instrument time of one tune assumed before one has been timed [s] (the twin's 0.5 s).
ASSUMED_TUNE_S = 0.5
#: Tunes' worth of time kept beyond those back to the incumbent when the budget runs out: the
#: largest probe a search step makes (three tunes out and back) and a frame.
SETTLE_MARGIN_TUNES = 8


class _ExcessVarianceTuner(ScriptedPolicy):
    """Shared machinery: corrector moves in tune bins and frames scored by excess variance."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.names: tuple[str, ...] = tuple(
            name for name in TUNED_ABERRATIONS if name in self.config.aberrations
        )
        #: Frames taken so far in the episode (the search's own count).
        self.frames = 0
        #: The settings the search holds best so far [nm] (the reported ones it last settled
        #: on; empty before it settles).
        self.incumbent_nm: dict[str, float] = {}
        #: Longest instrument time one tune has taken so far [s].
        self._tune_s = ASSUMED_TUNE_S

    # -- what the instrument reports --------------------------------------------------------

    def supported(self) -> bool:
        """Whether the task offers the scan and tune verbs and a tuned coefficient."""
        return "scan" in self.config.verbs and "tune" in self.config.verbs and bool(self.names)

    def excess_variance(self) -> float:
        """The latest frame's normalised excess variance, from the ``detector`` observation."""
        return float(decode_detector(np.asarray(self.observation["detector"])[0:2]).excess_variance)

    def frame_noise(self) -> float:
        """Standard deviation of one frame's excess variance under counting noise alone.

        For N pixels of Poisson counts with mean μ the sample variance scatters by
        sqrt((2μ² + μ) / N), so the excess variance by sqrt(2/N + 1/(μN)) / μ.
        """
        mean = decode_detector(np.asarray(self.observation["detector"])[0:2]).mean_counts
        pixels = float(np.prod(np.asarray(self.observation["frame"]).shape[-2:]))
        if mean <= 0.0 or pixels <= 0.0:
            return math.inf
        return math.sqrt(2.0 / pixels + 1.0 / (mean * pixels)) / mean

    def setting(self, name: str) -> float:
        """The reported corrector setting of a coefficient [nm]."""
        return float(self.instrument_state.aberrations_nm.get(name, 0.0))

    def settings(self) -> dict[str, float]:
        """The reported settings of the tuned coefficients [nm]."""
        return {name: self.setting(name) for name in self.names}

    def quantised(self, name: str, value_nm: float) -> float:
        """A setting rounded to the finest tune bin [nm]."""
        finest = self.finest_tune_nm(name)
        return round(value_nm / finest) * finest

    def tunes_needed(self, name: str, change_nm: float | np.ndarray) -> np.ndarray:
        """How many tunes the greedy decomposition of changes [nm] into bins takes (per change)."""
        magnitudes = sorted(
            {abs(self.tune_delta_nm(name, k)) for k in range(len(self.config.delta_steps))},
            reverse=True,
        )
        finest = min(magnitudes)
        remaining = np.abs(np.asarray(change_nm, dtype=np.float64))
        count = np.zeros(remaining.shape, dtype=np.int64)
        for magnitude in magnitudes:
            taken = np.floor((remaining + 0.5 * finest) / magnitude).astype(np.int64)
            taken = np.maximum(taken, 0)
            count += taken
            remaining = remaining - taken * magnitude
        return count

    # -- plans --------------------------------------------------------------------------------

    def tune_to(self, name: str, target_nm: float) -> Iterator[np.ndarray]:
        """Tune one coefficient towards a setting [nm] in the largest bins that do not overshoot.

        Stops early where a bin is refused (the corrector's range).
        """
        index = self.config.aberrations.index(name)
        for _step in range(64):
            bins = self.tune_bins_toward(name, target_nm - self.setting(name))
            if not bins:
                return
            action = self.action("tune", aberration=index, delta=bins[0])
            if not self.is_valid(action):
                return
            yield action
            if self.replaced:
                return

    def go(self, target_nm: Mapping[str, float]) -> Iterator[np.ndarray]:
        """Tune every coefficient of ``target_nm`` to its setting [nm]."""
        for name, value in target_nm.items():
            yield from self.tune_to(name, value)

    def measure(self, frames: int = 1) -> Generator[np.ndarray, None, float]:
        """Take ``frames`` frames here; their mean excess variance."""
        values = []
        for _frame in range(max(1, frames)):
            yield self.longest_scan()
            self.frames += 1
            values.append(self.excess_variance())
        return float(np.mean(values))

    def measure_at(
        self, target_nm: Mapping[str, float], frames: int = 1
    ) -> Generator[np.ndarray, None, float]:
        """Tune to ``target_nm`` and take ``frames`` frames there; their mean excess variance."""
        yield from self.go(target_nm)
        value = yield from self.measure(frames)
        return value

    def reset(self) -> None:
        """Start the plan afresh (called at every episode start)."""
        self.frames = 0
        self.incumbent_nm = {}
        self._tune_s = ASSUMED_TUNE_S
        super().reset()

    def _script(self) -> Iterator[np.ndarray]:
        if self.supported():
            if "detector" not in self.observation:
                raise ValueError(
                    f"{self.name} reads the detector statistics of the observation's "
                    "'detector' entry, which this environment does not offer (use "
                    "scopegym/Autotune-v1 or scopegym/AutotuneRonchigram-v2)"
                )
            for action in self._search():
                if self._time_to_settle():
                    break
                before = self.instrument_state.elapsed_s
                yield action
                if self.config.verbs[int(action[0])] == "tune":
                    spent = self.instrument_state.elapsed_s - before
                    self._tune_s = max(self._tune_s, spent)
            # Where no ground truth ends the episode (a real column, usim), the search would
            # otherwise stop wherever the budget cut it, often mid-probe: end on the best
            # settings found.
            yield from self.go(self.incumbent_nm)
        while True:
            yield self.longest_scan()

    def _time_to_settle(self) -> bool:
        """Whether the time left [s] only just covers tuning back to the incumbent.

        Time used comes from the observation's state (its budget fraction); a tune's duration
        is the longest one seen so far (at least :data:`ASSUMED_TUNE_S`).
        """
        budget_s = float(self.unwrapped.task.budget.time_s)
        used_s = 0.5 * (float(np.asarray(self.observation["state"])[3]) + 1.0) * budget_s
        tunes = sum(
            int(self.tunes_needed(name, value - self.setting(name)))
            for name, value in self.incumbent_nm.items()
        )
        # The tunes back, then room for the largest probe move of a search step.
        reserve_s = (tunes + SETTLE_MARGIN_TUNES) * self._tune_s
        return budget_s - used_s < reserve_s

    def _search(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


def fit_peak(offsets: np.ndarray, values: np.ndarray, half_width: float) -> float | None:
    """The vertex of the least-squares parabola through points around their maximum.

    Only points within ``half_width`` of the best one are fitted: far from its optimum the
    excess variance levels off at the specimen's noise floor, no parabola.

    Args:
        offsets: Settings probed [nm].
        values: Their (mean) excess variances.
        half_width: Half-width of the fitted window around the best setting [nm].

    Returns:
        The vertex [nm], kept within the probed range, or None where the fit is not concave.
    """
    offsets = np.asarray(offsets, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    best = float(offsets[int(np.argmax(values))])
    window = np.abs(offsets - best) <= half_width + 1e-9
    if np.count_nonzero(window) < 3 or np.unique(offsets[window]).size < 3:
        return None
    curvature, slope, _ = np.polyfit(offsets[window], values[window], 2)
    if not np.isfinite(curvature) or curvature >= 0:
        return None
    vertex = -slope / (2.0 * curvature)
    return float(np.clip(vertex, offsets.min(), offsets.max()))


class PatternSearchTunerPolicy(_ExcessVarianceTuner):
    """Line sweeps, then a compass search of the detector's excess variance, with shrinking steps.

    Stage 1 sweeps each coefficient in turn (C10, C12a, C12b, C21a, C21b) over its range of
    residuals in coarse steps (one tune bin apart where possible: 4 nm, 2 nm, 80 nm), takes one
    frame per point and moves to the vertex of the least-squares parabola through the best
    points (or to the best point). Stage 2 is a compass search: for each coefficient in turn it
    re-measures the incumbent and probes ±step around it, averaging ``frames`` frames per
    probe, fits the parabola through the three and moves to its vertex when the fit is concave
    and the probes differ by more than twice the counting noise (estimated from the mean
    counts), to the best probe when they differ by more than three times it, and stays
    otherwise. The step halves (down to ``smallest_steps``) when the incumbent holds, and
    doubles (up to ``largest_steps``) when the probes show no signal at all, which is what the
    noise floor far from the optimum looks like; the frames per probe double (up to
    ``max_frames``) in both cases and halve after a clear move. Coma barely changes the excess
    variance within ±100 nm, so its probes stay ±160 nm wide and its moves go 70 % of the way
    to the vertex. The search runs until the budget ends the episode.

    Args:
        env: The environment (needs the scan and tune verbs and the ``detector`` observation).
    """

    name = "pattern_search"

    #: Stage-1 sweeps: coefficient -> (half-width, spacing) [nm].
    sweeps: ClassVar[dict[str, tuple[float, float]]] = {
        "C10": (12.0, 4.0),
        "C12a": (4.0, 2.0),
        "C12b": (4.0, 2.0),
        "C21a": (240.0, 80.0),
        "C21b": (240.0, 80.0),
    }
    #: Passes of stage-1 sweeps over all coefficients.
    sweep_passes: ClassVar[int] = 1
    #: Frames per point of the stage-1 sweeps.
    sweep_frames: ClassVar[dict[str, int]] = {}
    #: Window of the stage-1 parabola fit around the best point [nm].
    fit_half_width: ClassVar[dict[str, float]] = {
        "C10": 4.0,
        "C12a": 2.0,
        "C12b": 2.0,
        "C21a": 480.0,
        "C21b": 480.0,
    }
    #: Stage-2 starting and smallest steps [nm]. Coma barely changes the excess variance within
    #: ±100 nm, so its probes stay wide: the difference between two wide, symmetric probes
    #: locates the optimum far better than two near ones.
    compass_steps: ClassVar[dict[str, float]] = {
        "C10": 2.0,
        "C12a": 2.0,
        "C12b": 2.0,
        "C21a": 160.0,
        "C21b": 160.0,
    }
    smallest_steps: ClassVar[dict[str, float]] = {
        "C10": 1.0,
        "C12a": 1.0,
        "C12b": 1.0,
        "C21a": 160.0,
        "C21b": 160.0,
    }
    largest_steps: ClassVar[dict[str, float]] = {
        "C10": 8.0,
        "C12a": 4.0,
        "C12b": 4.0,
        "C21a": 320.0,
        "C21b": 320.0,
    }
    #: Fraction of the way to the parabola's vertex a compass move goes.
    damping: ClassVar[dict[str, float]] = {
        "C10": 1.0,
        "C12a": 1.0,
        "C12b": 1.0,
        "C21a": 0.7,
        "C21b": 0.7,
    }
    #: Frames per probe at the starting steps, and at most.
    start_frames: ClassVar[int] = 2
    max_frames: ClassVar[int] = 4

    def _sweep(self, name: str) -> Iterator[np.ndarray]:
        half, spacing = self.sweeps[name]
        base = self.setting(name)
        count = int(round(half / spacing))
        offsets = spacing * np.arange(-count, count + 1, dtype=np.float64)
        # Sweep from the end nearer the present setting (it is the centre: either end).
        values = []
        for offset in offsets:
            value = yield from self.measure_at(
                {name: base + float(offset)}, self.sweep_frames.get(name, 1)
            )
            values.append(value)
        vertex = fit_peak(offsets, np.asarray(values), self.fit_half_width[name])
        best = float(offsets[int(np.argmax(values))]) if vertex is None else vertex
        yield from self.tune_to(name, self.quantised(name, base + best))
        self.incumbent_nm = self.settings()

    def _search(self) -> Iterator[np.ndarray]:
        for _pass in range(self.sweep_passes):
            for name in self.names:
                yield from self._sweep(name)
        steps = {name: self.compass_steps[name] for name in self.names}
        frames = {name: self.start_frames for name in self.names}
        while True:
            for name in self.names:
                yield from self._poll(name, steps, frames)

    def _poll(
        self, name: str, steps: dict[str, float], frames: dict[str, int]
    ) -> Iterator[np.ndarray]:
        step, count = steps[name], frames[name]
        base = self.setting(name)
        here = yield from self.measure(count)
        up = yield from self.measure_at({name: base + step}, count)
        down = yield from self.measure_at({name: base - step}, count)
        offsets = np.array([-step, 0.0, step])
        values = np.array([down, here, up])
        noise = self.frame_noise() / math.sqrt(count)
        spread = float(values.max() - values.min())
        vertex = fit_peak(offsets, values, step)
        if vertex is not None and spread > 2.0 * noise:
            target = self.damping[name] * vertex
        else:
            target = float(offsets[int(np.argmax(values))]) if spread > 3.0 * noise else 0.0
        target = self.quantised(name, target)
        yield from self.tune_to(name, self.quantised(name, base + target))
        self.incumbent_nm = self.settings()
        finest = self.finest_tune_nm(name)
        smallest = max(finest, self.smallest_steps[name])
        if spread <= 2.0 * noise:
            # No signal: either on the flat floor far from the optimum or at it with a step
            # too small to tell; a wider step tells them apart (the floor stays flat).
            steps[name] = min(self.largest_steps[name], 2.0 * step)
            frames[name] = min(self.max_frames, 2 * count)
        elif abs(target) < 0.5 * step:
            if step > smallest * 1.5:
                steps[name] = max(smallest, self.quantised(name, 0.5 * step))
            frames[name] = min(self.max_frames, 2 * count)
        elif spread > 3.0 * noise:
            frames[name] = max(1, count // 2)


def _require_gp() -> tuple[Any, Any, Any]:
    """torch, botorch and gpytorch, imported on first use (the ``gp`` extra).

    Raises:
        ImportError: The extra is not installed; the message says how to install it.
    """
    # By name, so that the core package never imports the extra (tests/test_dependencies.py).
    try:
        botorch = importlib.import_module("botorch")
        gpytorch = importlib.import_module("gpytorch")
        import torch
    except ImportError as error:
        raise ImportError(
            "the bo_tuner baseline needs gpytorch and botorch: pip install scopegym[gp]"
        ) from error
    return torch, botorch, gpytorch


class BayesianTunerPolicy(_ExcessVarianceTuner):
    """GP upper-confidence-bound search of the detector's excess variance, in stages.

    The published correctors' recipe: a Gaussian process (botorch ``SingleTaskGP``, Matérn 5/2
    kernel, counting noise from the mean counts as the observation noise) models the excess
    variance over a few coefficients at a time, and each acquisition goes to the candidate
    that maximises the upper confidence bound ``mean + sqrt(beta) * std``. Candidates are the
    settings the tune bins reach on a grid within the stage's box around the incumbent (0.5 nm
    for C10 and C12, 10 nm for C21), at most ``max_tunes`` tunes away from the present setting,
    so that one acquisition costs at most 0.46 s + 3 × 0.5 s of instrument time. Stages
    (:attr:`stages`), 46 acquisitions in all: C10 (8, ±12 nm), C12a and C12b (10, ±5 nm), C21a
    and C21b (20, ±300 nm), then C10, C12a and C12b together (8, ±2 nm); each ends by tuning to
    the measured setting with the best lower confidence bound ``mean - std``, so that a stage
    that saw only noise keeps its start. The stages then repeat with halved boxes until the
    budget ends the episode. The fits are seeded, so a run is deterministic given ``seed``;
    a fit plus acquisition takes tens of ms on one core.

    Args:
        env: The environment (needs the scan and tune verbs and the ``detector`` observation).
        seed: Seed of the GP fits (the only random element).
        beta: Exploration weight of the upper confidence bound.
        max_tunes: Most tunes one move to a candidate may take.
        stages: Stages to run instead of :attr:`stages`.

    Raises:
        ImportError: gpytorch or botorch is missing (``pip install scopegym[gp]``).
    """

    name = "bo_tuner"

    #: Stages: coefficients, half-width of the box around the incumbent [nm] (per
    #: coefficient), grid spacing [nm] (per coefficient) and acquisitions.
    stages: tuple[Stage, ...] = (
        (("C10",), (12.0,), (0.5,), 8),
        (("C12a", "C12b"), (5.0, 5.0), (0.5, 0.5), 10),
        (("C21a", "C21b"), (300.0, 300.0), (10.0, 10.0), 20),
        (("C10", "C12a", "C12b"), (2.0, 2.0, 2.0), (0.5, 0.5, 0.5), 8),
    )
    #: Width over which the excess variance changes [nm]: the kernel's input unit.
    widths_nm: ClassVar[dict[str, float]] = {
        "C10": 3.0,
        "C12a": 2.5,
        "C12b": 2.5,
        "C21a": 150.0,
        "C21b": 150.0,
    }

    def __init__(
        self,
        env: gym.Env[Any, Any],
        seed: int = 0,
        beta: float = 4.0,
        max_tunes: int = 3,
        stages: Sequence[Stage] | None = None,
    ) -> None:
        _require_gp()
        super().__init__(env)
        if stages is not None:
            self.stages = tuple(stages)
        self.seed = seed
        self.beta = beta
        self.max_tunes = max_tunes
        #: Wall time of each GP fit plus acquisition in the episode [s].
        self.acquisition_times_s: list[float] = []

    def reset(self) -> None:
        """Start the plan afresh (called at every episode start)."""
        self.acquisition_times_s = []
        super().reset()

    def _candidates(
        self, names: Sequence[str], centre: np.ndarray, half: np.ndarray, spacing: np.ndarray
    ) -> np.ndarray:
        """Grid settings inside the box, quantised to the tune bins [nm], one row each."""
        axes = []
        for name, c, h, d in zip(names, centre, half, spacing, strict=True):
            d = max(d, self.finest_tune_nm(name))
            count = int(math.floor(h / d + 1e-9))
            axes.append(self.quantised(name, c) + d * np.arange(-count, count + 1))
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1)

    def _fit(self, names: Sequence[str], x_nm: np.ndarray, y: np.ndarray, noise: float) -> Any:
        torch, _botorch, gpytorch = _require_gp()
        fit_gpytorch_mll = importlib.import_module("botorch.fit").fit_gpytorch_mll
        SingleTaskGP = importlib.import_module("botorch.models").SingleTaskGP  # noqa: N806
        ExactMarginalLogLikelihood = gpytorch.mlls.ExactMarginalLogLikelihood  # noqa: N806

        widths = np.array([self.widths_nm[name] for name in names])
        train_x = torch.as_tensor(x_nm / widths, dtype=torch.float64)
        train_y = torch.as_tensor(y[:, None], dtype=torch.float64)
        train_yvar = torch.full_like(train_y, max(noise, 1e-6) ** 2)
        kernel = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.MaternKernel(
                nu=2.5,
                ard_num_dims=len(names),
                lengthscale_prior=gpytorch.priors.LogNormalPrior(0.0, 0.5),
            ),
            outputscale_prior=gpytorch.priors.GammaPrior(2.0, 2.0),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = SingleTaskGP(train_x, train_y, train_Yvar=train_yvar, covar_module=kernel)
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        threads = torch.get_num_threads()
        # Tens of points: one thread beats several (and never oversubscribes a busy host).
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(self.seed + len(y))
                try:
                    fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": 60}})
                except Exception:  # noqa: BLE001 - a failed fit keeps the prior's values
                    pass
        finally:
            torch.set_num_threads(threads)
        model.eval()
        return model

    def _posterior(self, model: Any, names: Sequence[str], x_nm: np.ndarray) -> tuple[Any, Any]:
        torch, _botorch, _gpytorch = _require_gp()
        widths = np.array([self.widths_nm[name] for name in names])
        points = torch.as_tensor(x_nm / widths, dtype=torch.float64).unsqueeze(-2)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            mean, std = self._marginals(model, points)
        finally:
            torch.set_num_threads(threads)
        return mean, std

    @staticmethod
    def _marginals(model: Any, points: Any) -> tuple[np.ndarray, np.ndarray]:
        torch, _botorch, _gpytorch = _require_gp()
        with torch.no_grad():
            # One-point posteriors in a batch: the marginal variances without the full
            # covariance between candidates.
            posterior = model.posterior(points)
            mean = posterior.mean.reshape(-1).numpy()
            std = posterior.variance.clamp_min(0.0).sqrt().reshape(-1).numpy()
        return mean, std

    def _tunes_to(self, names: Sequence[str], points: np.ndarray) -> np.ndarray:
        """Tunes each row of ``points`` [nm] takes from the present settings."""
        here = self.settings()
        return np.sum(
            [self.tunes_needed(name, points[:, i] - here[name]) for i, name in enumerate(names)],
            axis=0,
        )

    def _stage(
        self,
        names: tuple[str, ...],
        half_nm: np.ndarray,
        spacing_nm: np.ndarray,
        acquisitions: int,
    ) -> Iterator[np.ndarray]:
        centre = np.array([self.setting(name) for name in names])
        candidates = self._candidates(names, centre, half_nm, spacing_nm)
        xs: list[np.ndarray] = []
        ys: list[float] = []
        value = yield from self.measure()
        xs.append(np.array([self.setting(name) for name in names]))
        ys.append(value)
        model = None
        for _acquisition in range(acquisitions - 1):
            started = time.perf_counter()
            x_nm, y = np.asarray(xs), np.asarray(ys)
            model = self._fit(names, x_nm, y, self.frame_noise())
            mean, std = self._posterior(model, names, candidates)
            score = mean + math.sqrt(self.beta) * std
            cost = self._tunes_to(names, candidates)
            score = np.where(cost <= self.max_tunes, score, -np.inf)
            if not np.isfinite(score).any():
                score = -cost.astype(np.float64)
            target = candidates[int(np.argmax(score))]
            self.acquisition_times_s.append(time.perf_counter() - started)
            value = yield from self.measure_at(dict(zip(names, map(float, target), strict=True)))
            xs.append(np.array([self.setting(name) for name in names]))
            ys.append(value)
        model = self._fit(names, np.asarray(xs), np.asarray(ys), self.frame_noise())
        measured = np.asarray(xs)
        mean, std = self._posterior(model, names, measured)
        # The measured setting with the best lower confidence bound: a flat, noisy stage (all
        # of it far from the optimum) keeps its start rather than chasing the noise.
        best = measured[int(np.argmax(mean - std))]
        yield from self.go(dict(zip(names, map(float, best), strict=True)))
        self.incumbent_nm = self.settings()

    def _search(self) -> Iterator[np.ndarray]:
        shrink = 1.0
        while True:
            for names, half, spacing, acquisitions in self.stages:
                present = tuple(name for name in names if name in self.names)
                if not present:
                    continue
                keep = [names.index(name) for name in present]
                half_nm = shrink * np.asarray(half)[keep]
                spacing_nm = np.maximum(
                    np.asarray(spacing)[keep] * max(shrink, 0.25),
                    [self.finest_tune_nm(name) for name in present],
                )
                yield from self._stage(present, half_nm, spacing_nm, acquisitions)
            shrink *= 0.5


__all__ = [
    "TUNED_ABERRATIONS",
    "BayesianTunerPolicy",
    "PatternSearchTunerPolicy",
    "fit_peak",
]
