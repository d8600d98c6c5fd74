"""Shared fixtures of the reward tests: a quiet twin, a stepper that builds StepContexts, and a
synthetic graphene image generator for fast, exactly known atom-finding cases."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest

from scopegym.instrument import Command, EELSSpectrum, Frame, Move, Zoom
from scopegym.rewards import Budget, StepContext
from scopegym.sim.stage import StageParams
from scopegym.sim.twin import TwinConfig, TwinMicroscope

QUIET = TwinConfig(stage=StageParams.ideal(), damage=None)
BOND_NM = 0.142
A_NM = 0.246


def quiet_twin(seed: int = 0) -> TwinMicroscope:
    return TwinMicroscope("graphene", seed=seed, config=QUIET)


class Stepper:
    """Runs commands on a twin and wraps each in a StepContext, as an environment would."""

    def __init__(self, twin: TwinMicroscope, budget: Budget, with_truth: bool = True) -> None:
        self.twin = twin
        self.budget = budget
        self.with_truth = with_truth
        self.history: list[Frame | EELSSpectrum] = []

    def __call__(self, command: Command) -> StepContext:
        before = self.twin.state()
        bounds = self.twin.truth.view_bounds_nm()
        result = self.twin.execute(command)
        ctx = StepContext(
            command=command,
            result=result,
            state_before=before,
            state_after=self.twin.state(),
            budget=self.budget,
            history=tuple(self.history),
            truth=self.twin.truth if self.with_truth else None,
            view_bounds_nm=bounds if self.with_truth else None,
        )
        if isinstance(result, Frame | EELSSpectrum):
            self.history.append(result)
        return ctx

    def go_to(self, x_nm: float, y_nm: float, fov_nm: float) -> None:
        """Centre the (ideal-stage) view on a world position and set the field of view."""
        cx, cy = self.twin.truth.view_center_nm()
        self(Move(dx_nm=x_nm - cx, dy_nm=y_nm - cy))
        self(Zoom(fov_nm=fov_nm))


@pytest.fixture
def make_stepper() -> Callable[..., Stepper]:
    def make(seed: int = 0, with_truth: bool = True, budget: Budget | None = None) -> Stepper:
        return Stepper(
            quiet_twin(seed), budget or Budget(time_s=100.0, dose_e_per_A2=1e6), with_truth
        )

    return make


@pytest.fixture(scope="session")
def point_defects() -> dict[str, list]:
    """Isolated dopants and vacancies near the centre of the seed-0 graphene world."""
    twin = quiet_twin(0)
    found: dict[str, list] = {"dopant": [], "vacancy": []}
    for defect in twin.truth.defects_in(960.0, 960.0, 1040.0, 1040.0):
        if defect.kind not in found:
            continue
        near = twin.truth.defects_in(
            defect.x_nm - 2.5, defect.y_nm - 2.5, defect.x_nm + 2.5, defect.y_nm + 2.5
        )
        if len(near) == 1:
            found[defect.kind].append(defect)
    return found


def honeycomb(extent_nm: float, offset_nm: tuple[float, float] = (0.05, 0.03)) -> np.ndarray:
    """Graphene atom positions [nm] filling a square [0, extent_nm)²."""
    a1 = np.array([A_NM, 0.0])
    a2 = np.array([A_NM / 2.0, A_NM * math.sqrt(3.0) / 2.0])
    basis = (np.zeros(2), (a1 + a2) / 3.0)
    n = int(extent_nm / A_NM * 2) + 4
    i, j = np.meshgrid(np.arange(-n, n), np.arange(-n, n), indexing="ij")
    cells = i.reshape(-1, 1) * a1 + j.reshape(-1, 1) * a2 + np.asarray(offset_nm)
    xy = np.concatenate([cells + b for b in basis])
    inside = (xy >= 0).all(axis=1) & (xy < extent_nm).all(axis=1)
    return xy[inside]


def render(
    atoms_nm: np.ndarray,
    extent_nm: float,
    size_px: int,
    rng: np.random.Generator,
    electrons: float = 200.0,
    width_nm: float = 0.04,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Poisson image of Gaussian atoms: ``electrons`` expected counts at an atom's peak."""
    p = extent_nm / size_px
    centres = (np.arange(size_px) + 0.5) * p
    image = np.zeros((size_px, size_px))
    w = np.ones(len(atoms_nm)) if weights is None else weights
    reach = 4.0 * width_nm
    for (x, y), weight in zip(atoms_nm, w, strict=True):
        cols = np.flatnonzero(np.abs(centres - x) < reach)
        rows = np.flatnonzero(np.abs(centres - y) < reach)
        gx = np.exp(-0.5 * ((centres[cols] - x) / width_nm) ** 2)
        gy = np.exp(-0.5 * ((centres[rows] - y) / width_nm) ** 2)
        image[np.ix_(rows, cols)] += weight * np.outer(gy, gx)
    return rng.poisson(electrons * image + 0.5).astype(np.float64)


@pytest.fixture(scope="session")
def synth() -> SimpleNamespace:
    """The synthetic-lattice helpers, for test modules (conftest is not importable)."""
    return SimpleNamespace(
        honeycomb=honeycomb, render=render, bond_nm=BOND_NM, quiet_twin=quiet_twin
    )
