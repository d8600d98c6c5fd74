import numpy as np
import pytest
from hypothesis import example, given, settings
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


# --- odd-order aberrations: the scanned image is the probe point-reflected -----------------------

ODD_TERMS = ("C21a", "C21b", "C23a", "C23b")
EVEN_TERMS = ("C10", "C12a", "C12b")
_ODD_RANGE_NM = {"C21a": 300.0, "C21b": 300.0, "C23a": 300.0, "C23b": 300.0}
_EVEN_RANGE_NM = {"C10": 6.0, "C12a": 3.0, "C12b": 3.0}


def _lone_atom_image(aberrations, voltage=60.0, n=128, pixel=0.01):
    """Noise-free image of one Si atom at the frame's geometric centre (even n: between pixels)."""
    optics = Optics(voltage_kV=voltage, convergence_mrad=30.0, aberrations_nm=aberrations)
    center = (500.0, 500.0)
    return scattered_fraction(_OneAtom(14, center), optics, _geometry(center, n * pixel, n), STILL)


def _coefficients(draw_terms, ranges):
    return st.fixed_dictionaries(
        {name: st.floats(-ranges[name], ranges[name]) for name in draw_terms}
    )


def _asymmetry(image):
    """Relative difference between an image and its point reflection through the frame centre."""
    return float(np.abs(image - image[::-1, ::-1]).sum() / image.sum())


@settings(max_examples=12, deadline=None)
@given(odd=_coefficients(ODD_TERMS, _ODD_RANGE_NM), even=_coefficients(EVEN_TERMS, _EVEN_RANGE_NM))
# Weak three-fold astigmatism: its asymmetry lies in the tails, not at the peak (found by CI).
@example(
    odd={"C21a": 0.0, "C21b": 0.0, "C23a": 0.0, "C23b": 34.0},
    even={"C10": 0.0, "C12a": 0.0, "C12b": 0.0},
)
def test_image_of_a_lone_atom_is_the_probe_point_reflected(odd, even):
    """A probe at r meets the atom at r_i with P(r_i - r): the image is P(-r), not P(r)."""
    n, pixel = 255, 0.01  # odd: the atom sits on a pixel centre, the probe grid's centre
    aberrations = {**odd, **even}
    image = _lone_atom_image(aberrations, n=n, pixel=pixel)
    optics = Optics(voltage_kV=60.0, convergence_mrad=30.0, aberrations_nm=aberrations)
    probe = probe_intensity(optics, (n, n), pixel, centered=True)
    expected = probe[::-1, ::-1] * (image.sum() / probe.sum())
    np.testing.assert_allclose(image, expected, atol=0.02 * image.max())
    asymmetry = _asymmetry(probe)
    if asymmetry > 0.2:
        # The unreflected probe is measurably wrong whenever the odd terms make it asymmetric,
        # by the same summed measure (weak odd terms move the tails more than the peak).
        unreflected = probe * (image.sum() / probe.sum())
        assert np.abs(image - unreflected).sum() / image.sum() > 0.5 * asymmetry


@settings(max_examples=10, deadline=None)
@given(odd=_coefficients(ODD_TERMS, _ODD_RANGE_NM), even=_coefficients(EVEN_TERMS, _EVEN_RANGE_NM))
def test_flipping_the_odd_terms_point_reflects_the_image(odd, even):
    """chi(-k) flips only the odd-order terms, so negating them is a point reflection."""
    image = _lone_atom_image({**odd, **even})
    flipped = _lone_atom_image({**{k: -v for k, v in odd.items()}, **even})
    np.testing.assert_allclose(flipped, image[::-1, ::-1], atol=1e-4 * image.max())
    # The even terms alone leave a centro-symmetric image of a centro-symmetric specimen.
    assert _asymmetry(_lone_atom_image(even)) < 1e-3


def _angular_moment(intensity, center, fold, radius_px=80.0):
    """``sum I (x + iy)^m / sum I`` within a disc about ``center`` [px^m].

    Its phase gives the axis of the m-fold asymmetry. The disc keeps out the far tails, which the
    periodic probe grid wraps and the padded image does not.
    """
    rows, cols = np.indices(intensity.shape)
    z = (cols - center[1]) + 1j * (rows - center[0])
    weights = intensity * (np.abs(z) <= radius_px)
    return complex((weights * z**fold).sum() / weights.sum())


@pytest.mark.parametrize("name", ODD_TERMS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_odd_terms_skew_the_image_opposite_to_the_probe(name, sign):
    n = 255
    value = sign * 200.0
    fold = int(name[2])
    image = _lone_atom_image({name: value}, n=n)
    optics = Optics(voltage_kV=60.0, convergence_mrad=30.0, aberrations_nm={name: value})
    probe = probe_intensity(optics, (n, n), 0.01, centered=True)
    center = ((n - 1) / 2.0, (n - 1) / 2.0)
    probe_moment = _angular_moment(probe, center, fold)
    image_moment = _angular_moment(image, center, fold)
    assert abs(probe_moment) > 1.0
    assert image_moment == pytest.approx(-probe_moment, rel=0.05)
    # The a (cosine) term skews along the real axis of (x + iy)^m, the b (sine) term along the
    # imaginary one; flipping the sign flips the skew.
    on_axis = probe_moment.real if name.endswith("a") else probe_moment.imag
    assert abs(on_axis) > 0.9 * abs(probe_moment)
    reference = _angular_moment(_lone_atom_image({name: 200.0}, n=n), center, fold)
    assert image_moment == pytest.approx(sign * reference, rel=1e-3)


def test_a_frame_smaller_than_the_probe_does_not_wrap_its_tails():
    """A 9 px frame of 0.01 nm pixels on a Mo atom: the probe's tails reach far past the frame."""
    optics = Optics(voltage_kV=60.0, convergence_mrad=30.0)
    center = (500.0, 500.0)
    specimen = _OneAtom(42, center)
    small = scattered_fraction(specimen, optics, _geometry(center, 9 * 0.01, 9), STILL)
    large = scattered_fraction(specimen, optics, _geometry(center, 255 * 0.01, 255), STILL)
    # Capping the margin at the frame size read +25 % here; the 1 % of the probe beyond its
    # 99 % radius still wraps, by about 1 %.
    np.testing.assert_allclose(small, large[123:132, 123:132], rtol=0.02)


@pytest.mark.parametrize("aberrations", [{"C10": 5000.0}, {"C21a": 10000.0, "C12b": -1000.0}])
def test_work_per_frame_is_bounded_at_the_corrector_limits(aberrations):
    """The default corrector range allows a probe ~300 nm wide: its grid stays bounded."""
    from scopegym.sim import imaging

    optics = Optics(voltage_kV=60.0, convergence_mrad=30.0, aberrations_nm=aberrations)
    specimen = Specimen("graphene", seed=0)
    geometry = _geometry((1000.0, 1000.0), 4.0, 64)
    expected = imaging._expected_image(specimen, optics, geometry, STILL)
    assert max(expected.values.shape) <= imaging.MAX_PADDED_SIDE_PX
    image = scattered_fraction(specimen, optics, geometry, STILL)
    # Blurred nearly flat, at the specimen's mean scattering.
    assert np.isfinite(image).all()
    assert image.std() < 0.2 * image.mean()
