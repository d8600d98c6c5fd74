import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopegym.sim.imaging import (
    HAADFDetector,
    RasterGeometry,
    RasterTiming,
    acquire_haadf,
    electrons_per_pixel,
    scattered_fraction,
)
from scopegym.sim.optics import Optics, probe_intensity
from scopegym.sim.scattering import haadf_cross_section_nm2
from scopegym.sim.specimen import Atoms, Specimen

STILL = RasterTiming(line_jitter_nm=0.0)


def _geometry(center, fov_nm, size_px, dwell_us=1.0, drift=None, jitter=None):
    zeros = np.zeros((size_px, 2))
    return RasterGeometry(
        center_nm=center,
        fov_nm=fov_nm,
        size_px=size_px,
        dwell_us=dwell_us,
        line_drift_nm=zeros if drift is None else drift,
        line_velocity_nm_per_s=zeros,
        line_jitter_nm=np.zeros(size_px) if jitter is None else jitter,
    )


class _OneAtom(Specimen):
    """A specimen holding a single atom, to test the image model in isolation."""

    def __init__(self, z, xy):
        super().__init__("graphene", seed=0)
        self._atom = Atoms(
            np.array([xy], float),
            np.array([z], np.int16),
            np.ones(1, np.float32),
            np.zeros(1, np.int8),
            np.zeros(1, np.float32),
        )

    def atoms_in(self, x0, y0, x1, y1):
        return self._atom


@settings(max_examples=15, deadline=None)
@given(
    voltage=st.sampled_from([60.0, 80.0, 100.0, 200.0, 300.0]), convergence=st.floats(15.0, 35.0)
)
def test_zero_aberration_image_of_one_atom_is_its_cross_section_times_the_probe(
    voltage, convergence
):
    optics = Optics(voltage_kV=voltage, convergence_mrad=convergence)
    n, pixel = 255, 0.01  # odd, so the atom sits on a pixel centre; wide enough for Airy tails
    center = (500.0, 500.0)
    specimen = _OneAtom(14, center)
    image = scattered_fraction(specimen, optics, _geometry(center, n * pixel, n), STILL)
    sigma = haadf_cross_section_nm2(14, voltage)
    # Integrated over the scan, the image gives back the cross-section [nm^2].
    assert image.sum() * pixel**2 == pytest.approx(sigma, rel=0.025)
    probe = probe_intensity(optics, (n, n), pixel, centered=True) / pixel**2
    np.testing.assert_allclose(image.max(), sigma * probe.max(), rtol=0.05)
    # The round zero-aberration probe makes a centro-symmetric atom image.
    np.testing.assert_allclose(image, image[::-1, ::-1], atol=0.02 * image.max())


@settings(max_examples=15, deadline=None)
@given(dwell=st.floats(0.2, 50.0), current=st.floats(1.0, 200.0))
def test_expected_signal_scales_with_dose(dwell, current):
    assert electrons_per_pixel(current, dwell) == pytest.approx(
        current * 1e-12 * dwell * 1e-6 / 1.602176634e-19
    )
    specimen = Specimen("graphene", seed=0)
    geometry = _geometry((1000.0, 1000.0), 2.0, 64, dwell_us=dwell)
    fraction = scattered_fraction(specimen, Optics(), geometry, STILL)
    mean = fraction * electrons_per_pixel(current, dwell)
    reference = scattered_fraction(
        specimen, Optics(), _geometry((1000.0, 1000.0), 2.0, 64), STILL
    ) * electrons_per_pixel(1.0, 1.0)
    np.testing.assert_allclose(mean, reference * current * dwell, rtol=1e-9)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_noisy_frames_average_to_the_expected_signal(seed):
    specimen = Specimen("graphene", seed=0)
    geometry = _geometry((1000.0, 1000.0), 1.0, 32, dwell_us=4.0)
    detector = HAADFDetector(offset=0.0, read_noise=0.0)
    rng = np.random.default_rng(seed)
    frames = np.stack(
        [
            acquire_haadf(specimen, Optics(), geometry, STILL, detector, 30.0, rng)
            for _ in range(200)
        ]
    )
    expected = scattered_fraction(specimen, Optics(), geometry, STILL) * electrons_per_pixel(30, 4)
    assert abs(frames.mean() - expected.mean()) < 5 * np.sqrt(expected.mean() / frames.size)
    # Poisson: the pixel variance equals the pixel mean.
    assert frames.var(0).mean() == pytest.approx(expected.mean(), rel=0.1)


def test_uniform_drift_shifts_the_image_by_the_drift():
    specimen = Specimen("graphene", seed=0)
    n, fov = 64, 2.0
    drift = np.tile([0.25, 0.0], (n, 1))  # specimen displaced 0.25 nm in x during the frame
    moved = scattered_fraction(
        specimen, Optics(), _geometry((1000.0, 1000.0), fov, n, drift=drift), STILL
    )
    shifted_view = scattered_fraction(
        specimen, Optics(), _geometry((999.75, 1000.0), fov, n), STILL
    )
    np.testing.assert_allclose(moved[:, 10:-10], shifted_view[:, 10:-10], atol=0.02 * moved.max())


def test_line_jitter_moves_whole_lines():
    specimen = Specimen("graphene", seed=0)
    n = 64
    jitter = np.zeros(n)
    jitter[20] = 0.1
    base = scattered_fraction(specimen, Optics(), _geometry((1000.0, 1000.0), 2.0, n), STILL)
    jittered = scattered_fraction(
        specimen, Optics(), _geometry((1000.0, 1000.0), 2.0, n, jitter=jitter), STILL
    )
    changed = np.abs(jittered - base).max(axis=1) > 1e-4 * base.max()
    assert changed[20]
    assert changed.sum() == 1


def test_low_magnification_image_has_the_mean_of_the_atomic_image():
    specimen = Specimen("graphene", seed=0)
    atomic = scattered_fraction(specimen, Optics(), _geometry((1004.0, 1004.0), 8.0, 256), STILL)
    coarse = scattered_fraction(specimen, Optics(), _geometry((1004.0, 1004.0), 8.0, 32), STILL)
    assert coarse.mean() == pytest.approx(atomic.mean(), rel=0.1)
