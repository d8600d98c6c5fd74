"""Interval estimates for evaluation tables: Wilson for rates, bootstrap for the rest.

Every per-episode metric is declared in :data:`METRICS` with its unit and how it is summarised:

- **0/1 metrics** (``success``, ``terminated``): the rate k/n with a Wilson score interval. A
  Student-t interval around a rate leaves [0, 1] at small k (3/25 gives −0.017) and collapses to
  a point at 0/n and n/n; the Wilson interval does neither. It is preferred over
  Clopper–Pearson because its coverage stays close to the nominal level on average, whereas
  Clopper–Pearson guarantees at least that coverage by being markedly wider at n ≈ 25 (3/25:
  [0.042, 0.30] against [0.025, 0.31]), which would blunt comparisons between policies.
- **Everything else** (counts, rates per hour, doses, times, returns, acquisitions to
  tolerance): percentile bootstrap intervals of the mean and of the median, from
  :data:`BOOTSTRAP_RESAMPLES` resamples drawn by a NumPy Generator seeded from the evaluation
  seed and the metric's name, so a report is the same every time it is made. Skewed metrics
  report the median beside the mean; acquisitions, frames and dose to tolerance lead with the
  median. Metrics that are undefined in some episodes (NaN, e.g. acquisitions to tolerance of a
  failed episode) are summarised over the episodes where they are defined, and that number is
  reported as ``n``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

#: Resamples per bootstrap interval.
BOOTSTRAP_RESAMPLES = 10_000
#: Coverage of every interval.
CONFIDENCE = 0.95
#: Elements of the resample index array drawn at once (bounds memory for long evaluations).
_CHUNK_ELEMENTS = 2_000_000

WILSON = "wilson"
BOOTSTRAP = "bootstrap-percentile"
#: How each interval method is named in reports.
METHOD_NAMES = {WILSON: "Wilson score", BOOTSTRAP: "percentile bootstrap"}

Centre = Literal["rate", "mean", "median"]


@dataclass(frozen=True)
class MetricSpec:
    """How one per-episode metric is labelled and summarised.

    Attributes:
        label: Name in tables and on plot axes.
        unit: Unit shown in brackets after the label ("count" for counts, "dimensionless" for
            pure numbers).
        binary: The metric is 0 or 1 per episode: a rate with a Wilson interval.
        skewed: Report the median (with its bootstrap interval) beside the mean.
        centre: The statistic a table cell and a bar lead with: "rate" (binary metrics),
            "mean" or "median".
    """

    label: str
    unit: str
    binary: bool = False
    skewed: bool = False
    centre: Centre = "mean"

    @property
    def axis_label(self) -> str:
        """``label [unit]``, for table headers and plot axes."""
        return f"{self.label} [{self.unit}]"


def _rate(label: str) -> MetricSpec:
    return MetricSpec(label, "fraction of episodes", binary=True, centre="rate")


#: Every metric :class:`~scopegym.agents.evaluation.EpisodeResult` reports, by name.
METRICS: dict[str, MetricSpec] = {
    "return": MetricSpec("return", "dimensionless"),
    "steps": MetricSpec("steps", "count"),
    "time_s": MetricSpec("instrument time", "s"),
    "dose_e_per_A2": MetricSpec("dose", "e/Å²", skewed=True),
    "n_scans": MetricSpec("frames acquired", "count"),
    "n_spectra": MetricSpec("spectra acquired", "count"),
    "n_ronchigrams": MetricSpec("Ronchigrams acquired", "count"),
    "terminated": _rate("ended by the task"),
    "defects_found": MetricSpec("defects found", "count", skewed=True),
    "defects_per_hour": MetricSpec("defects per instrument-hour", "1/h", skewed=True),
    "dose_per_defect": MetricSpec("dose per defect", "e/Å²", skewed=True),
    "success": _rate("success rate"),
    "scans_to_tolerance": MetricSpec("frames to tolerance", "count", skewed=True, centre="median"),
    "acquisitions_to_tolerance": MetricSpec(
        "acquisitions to tolerance", "count", skewed=True, centre="median"
    ),
    "dose_to_tolerance": MetricSpec("dose to tolerance", "e/Å²", skewed=True, centre="median"),
    "phase_error_final_rad": MetricSpec("final RMS phase error", "rad"),
    "signatures_found": MetricSpec("signatures found", "count", skewed=True),
    "signatures_per_spectrum": MetricSpec("signatures per spectrum", "1/spectrum"),
}

# Units of metrics not in METRICS, read off the name's suffix as the project spells them.
_SUFFIX_UNITS = (("_e_per_A2", "e/Å²"), ("_rad", "rad"), ("_nm", "nm"), ("_s", "s"))


def metric_spec(name: str) -> MetricSpec:
    """The spec of a metric: from :data:`METRICS`, else a bootstrapped mean.

    Reward parts (``part_<name>``) are dimensionless; other unknown names take their unit from
    their suffix (``_s``, ``_nm``, ``_rad``, ``_e_per_A2``), else are dimensionless.

    Args:
        name: Metric name as in ``EpisodeResult.scalars()``.
    """
    if name in METRICS:
        return METRICS[name]
    if name.startswith("part_"):
        return MetricSpec(f"reward part {name.removeprefix('part_')}", "dimensionless")
    for suffix, unit in _SUFFIX_UNITS:
        if name.endswith(suffix):
            return MetricSpec(name.removesuffix(suffix).replace("_", " "), unit)
    return MetricSpec(name.replace("_", " "), "dimensionless")


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return float(stats.norm.ppf(0.5 + 0.5 * confidence))


def wilson_interval(
    successes: int, trials: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    The interval is the set of proportions p whose score test, |k/n − p| ≤ z·sqrt(p(1−p)/n),
    does not reject k successes in n trials; solving that quadratic in p gives the bounds.

    Args:
        successes: k, successes.
        trials: n, trials.
        confidence: Coverage of the interval.

    Returns:
        ``(low, high)``, within [0, 1]: exactly 0 at k = 0 and exactly 1 at k = n; (NaN, NaN)
        without trials.

    Raises:
        ValueError: k outside [0, n], or a confidence outside (0, 1).
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")
    z = _z(confidence)
    if trials == 0:
        return math.nan, math.nan
    p = successes / trials
    z2_n = z * z / trials
    centre = (p + 0.5 * z2_n) / (1.0 + z2_n)
    half = z * math.sqrt(p * (1.0 - p) / trials + z2_n / (4.0 * trials)) / (1.0 + z2_n)
    # At k = 0 and k = n the bound is 0 or 1 exactly; rounding could leave it a hair outside.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    data = np.asarray(values, dtype=np.float64).ravel()
    return data[np.isfinite(data)]


def bootstrap_distribution(
    values: Sequence[float] | np.ndarray,
    statistic: Literal["mean", "median"] = "mean",
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int | np.random.SeedSequence = 0,
) -> np.ndarray:
    """The statistic of each bootstrap resample of the finite values.

    Resamples draw n indices with replacement from a Generator seeded by ``seed``; the same
    seed gives the same resamples, whichever statistic is asked for.

    Args:
        values: Per-episode values (NaN and infinities are left out).
        statistic: "mean" or "median".
        resamples: Number of resamples.
        seed: Seed of the Generator.

    Returns:
        Shape ``(resamples,)``; empty without finite values.
    """
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    data = _finite(values)
    if data.size == 0:
        return np.empty(0)
    rng = np.random.default_rng(seed)
    estimates = np.empty(resamples)
    chunk = max(1, _CHUNK_ELEMENTS // data.size)
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        indices = rng.integers(0, data.size, size=(count, data.size))
        resampled = data[indices]
        estimates[start : start + count] = (
            resampled.mean(axis=1) if statistic == "mean" else np.median(resampled, axis=1)
        )
    return estimates


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    statistic: Literal["mean", "median"] = "mean",
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int | np.random.SeedSequence = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean or median of the finite values.

    Args:
        values: Per-episode values (NaN and infinities are left out).
        statistic: "mean" or "median".
        confidence: Coverage of the interval.
        resamples: Number of resamples.
        seed: Seed of the resampling Generator.

    Returns:
        ``(low, high)``: the (1 − confidence)/2 and (1 + confidence)/2 quantiles of the
        resampled statistic; (NaN, NaN) without finite values.
    """
    _z(confidence)  # validates it
    estimates = bootstrap_distribution(values, statistic, resamples, seed)
    if estimates.size == 0:
        return math.nan, math.nan
    tail = 0.5 * (1.0 - confidence)
    low, high = np.quantile(estimates, (tail, 1.0 - tail))
    return float(low), float(high)


def metric_seed(seed: int, metric: str) -> np.random.SeedSequence:
    """The bootstrap seed of one metric: the evaluation seed and a checksum of the name.

    Each metric gets its own resamples, unchanged by which other metrics or policies a report
    holds; two policies with the same values get the same interval.

    Args:
        seed: The evaluation's seed (any integer).
        metric: Metric name.
    """
    return np.random.SeedSequence([seed & 0xFFFF_FFFF_FFFF_FFFF, zlib.crc32(metric.encode())])


@dataclass(frozen=True)
class MetricSummary:
    """One metric of one policy, over its episodes.

    Attributes:
        metric: Metric name.
        spec: How it is labelled and summarised.
        method: Interval method, :data:`WILSON` or :data:`BOOTSTRAP`.
        confidence: Coverage of the intervals.
        episodes: Episodes evaluated.
        n: Episodes where the metric is defined (finite).
        value: The leading statistic (``spec.centre``): rate, mean or median.
        low: Lower bound of ``value``'s interval.
        high: Upper bound of ``value``'s interval.
        mean: Mean over the n episodes (the rate for 0/1 metrics).
        median: Median over the n episodes (NaN for 0/1 metrics).
        successes: k of k/n (0/1 metrics; else None).
        mean_low: Bootstrap interval of the mean, lower bound (else None).
        mean_high: Bootstrap interval of the mean, upper bound (else None).
        median_low: Bootstrap interval of the median, lower bound (else None).
        median_high: Bootstrap interval of the median, upper bound (else None).
        resamples: Bootstrap resamples (else None).
        seed: Evaluation seed the resamples derive from (see :func:`metric_seed`; else None).
        values: Per-episode values in episode order, NaN where undefined.
    """

    metric: str
    spec: MetricSpec
    method: str
    confidence: float
    episodes: int
    n: int
    value: float
    low: float
    high: float
    mean: float
    median: float
    successes: int | None = None
    mean_low: float | None = None
    mean_high: float | None = None
    median_low: float | None = None
    median_high: float | None = None
    resamples: int | None = None
    seed: int | None = None
    values: tuple[float, ...] = field(default=(), repr=False)

    @property
    def centre(self) -> str:
        """Which statistic ``value`` is: "rate", "mean" or "median"."""
        return self.spec.centre

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the method, unit and figures, with NaN as None."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return value

        document: dict[str, Any] = {
            "label": self.spec.label,
            "unit": self.spec.unit,
            "method": self.method,
            "centre": self.centre,
            "confidence": self.confidence,
            "episodes": self.episodes,
            "n": self.n,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "mean": self.mean,
            "median": self.median,
        }
        if self.method == WILSON:
            document["successes"] = self.successes
        else:
            document.update(
                mean_low=self.mean_low,
                mean_high=self.mean_high,
                median_low=self.median_low,
                median_high=self.median_high,
                resamples=self.resamples,
                seed=self.seed,
            )
        cleaned = {key: clean(value) for key, value in document.items()}
        cleaned["values"] = [clean(value) for value in self.values]
        return cleaned


def summarise_metric(
    metric: str,
    values: Sequence[float],
    confidence: float = CONFIDENCE,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> MetricSummary:
    """Summarise one metric's per-episode values as :data:`METRICS` declares.

    Args:
        metric: Metric name.
        values: One value per episode, NaN where undefined.
        confidence: Coverage of the intervals.
        seed: Evaluation seed; each metric's bootstrap seed derives from it and the name.
        resamples: Bootstrap resamples.

    Raises:
        ValueError: A 0/1 metric holds another value.
    """
    spec = metric_spec(metric)
    everything = tuple(float(value) for value in values)
    data = _finite(everything)
    n = int(data.size)
    mean = float(data.mean()) if n else math.nan
    # The median of a 0/1 metric says nothing the rate does not.
    median = float(np.median(data)) if n and not spec.binary else math.nan
    if spec.binary:
        if not np.isin(data, (0.0, 1.0)).all():
            raise ValueError(f"{metric} is declared 0/1 per episode, got {sorted(set(data))}")
        successes = int(data.sum())
        low, high = wilson_interval(successes, n, confidence) if n else (math.nan, math.nan)
        return MetricSummary(
            metric,
            spec,
            WILSON,
            confidence,
            len(everything),
            n,
            value=mean,
            low=low,
            high=high,
            mean=mean,
            median=median,
            successes=successes,
            values=everything,
        )
    sequence = metric_seed(seed, metric)
    mean_low, mean_high = bootstrap_interval(data, "mean", confidence, resamples, sequence)
    median_low, median_high = bootstrap_interval(data, "median", confidence, resamples, sequence)
    by_median = spec.centre == "median"
    return MetricSummary(
        metric,
        spec,
        BOOTSTRAP,
        confidence,
        len(everything),
        n,
        value=median if by_median else mean,
        low=median_low if by_median else mean_low,
        high=median_high if by_median else mean_high,
        mean=mean,
        median=median,
        mean_low=mean_low,
        mean_high=mean_high,
        median_low=median_low,
        median_high=median_high,
        resamples=resamples,
        seed=seed,
        values=everything,
    )


def _number(value: float) -> str:
    return f"{value:.4g}"


def format_cell(summary: MetricSummary | None) -> str:
    """A table cell: the leading statistic and its interval, k/n for rates, n for subsets.

    Examples: ``0.12 (3/25) [0.042, 0.3]``; ``105.1 [85.4, 124.7]; median 98 [80, 120]``;
    ``median 8 [6, 10] (n = 3)``; ``n/a (n = 0)``.

    Args:
        summary: The metric's summary (None: the policy never reported it).
    """
    if summary is None:
        return "n/a"
    if summary.n == 0:
        return "n/a (n = 0)"
    interval = f"[{_number(summary.low)}, {_number(summary.high)}]"
    subset = f" (n = {summary.n})" if summary.n < summary.episodes else ""
    if summary.method == WILSON:
        return f"{summary.value:.3g} ({summary.successes}/{summary.n}) {interval}"
    if summary.centre == "median":
        return f"median {_number(summary.value)} {interval}{subset}; mean {_number(summary.mean)}"
    cell = f"{_number(summary.value)} {interval}"
    if summary.spec.skewed and summary.median_low is not None and summary.median_high is not None:
        cell += (
            f"; median {_number(summary.median)} "
            f"[{_number(summary.median_low)}, {_number(summary.median_high)}]"
        )
    return cell + subset


def describe_method(summary: MetricSummary) -> str:
    """One line saying what a metric's cell shows, for a report's legend."""
    share = f"{summary.confidence:.0%}".replace("%", " %")
    if summary.method == WILSON:
        return f"rate (k/n) with its {share} Wilson score interval"
    what = f"{summary.centre} with its {share} percentile bootstrap interval"
    if summary.centre == "mean" and summary.spec.skewed:
        what += "; the median with its interval beside it"
    elif summary.centre == "median":
        what += "; the mean beside it"
    return what + f" ({summary.resamples} resamples, seeded from seed={summary.seed})"


__all__ = [
    "BOOTSTRAP",
    "BOOTSTRAP_RESAMPLES",
    "CONFIDENCE",
    "METHOD_NAMES",
    "METRICS",
    "WILSON",
    "MetricSpec",
    "MetricSummary",
    "bootstrap_distribution",
    "bootstrap_interval",
    "describe_method",
    "format_cell",
    "metric_seed",
    "metric_spec",
    "summarise_metric",
    "wilson_interval",
]
