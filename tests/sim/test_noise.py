import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopegym.sim import noise


@settings(max_examples=30, deadline=None)
@given(mean=st.floats(0.05, 2000.0), seed=st.integers(0, 2**32 - 1))
def test_poisson_counts_have_poisson_mean_and_variance(mean, seed):
    draws = noise.poisson(np.full(20000, mean), np.random.default_rng(seed))
    assert np.all(draws >= 0)
    assert np.all(draws == np.round(draws))
    # 6-sigma bounds on the sample mean and variance of 20 000 Poisson draws.
    assert abs(draws.mean() - mean) < 6 * np.sqrt(mean / draws.size) + 1e-3
    var_sigma = np.sqrt((2 * mean**2 + mean) / draws.size)
    assert abs(draws.var() - mean) < 6 * var_sigma + 1e-3


def test_poisson_matches_the_probability_mass_function_at_small_means():
    from scipy.stats import poisson

    draws = noise.poisson(np.full(200000, 3.2), np.random.default_rng(1)).astype(int)
    observed = np.bincount(draws, minlength=12)[:12] / draws.size
    expected = poisson.pmf(np.arange(12), 3.2)
    np.testing.assert_allclose(observed, expected, atol=0.004)


def test_poisson_matches_the_probability_mass_function_in_the_rejection_regime():
    from scipy.stats import poisson

    draws = noise.poisson(np.full(200000, 40.0), np.random.default_rng(2)).astype(int)
    ks = np.arange(20, 60)
    observed = np.array([(draws == k).mean() for k in ks])
    np.testing.assert_allclose(observed, poisson.pmf(ks, 40.0), atol=0.003)


def test_zero_and_negative_means_give_zero_counts():
    draws = noise.poisson(np.array([0.0, -1.0, np.nan]), np.random.default_rng(0))
    np.testing.assert_array_equal(draws, 0.0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**63))
def test_same_generator_state_gives_the_same_counts(seed):
    mean = np.linspace(0, 50, 1000)
    a = noise.detect(mean, np.random.default_rng(seed), gain=2.0, offset=1.0, read_noise=0.5)
    b = noise.detect(mean, np.random.default_rng(seed), gain=2.0, offset=1.0, read_noise=0.5)
    np.testing.assert_array_equal(a, b)


def test_detector_gain_offset_and_read_noise():
    rng = np.random.default_rng(3)
    dark = noise.detect(np.zeros(100000), rng, gain=3.0, offset=10.0, read_noise=2.0)
    assert dark.mean() == pytest.approx(10.0, abs=0.05)
    assert dark.std() == pytest.approx(2.0, rel=0.02)
    lit = noise.detect(np.full(100000, 5.0), rng, gain=3.0, offset=10.0, read_noise=0.0)
    assert lit.mean() == pytest.approx(25.0, rel=0.01)
    assert lit.var() == pytest.approx(9.0 * 5.0, rel=0.05)  # gain^2 x Poisson variance


def test_detect_rows_shifts_each_row():
    image = np.tile(np.arange(10.0), (3, 1)) * 1000.0
    out = noise.detect_rows(
        image, (0, 2), (3, 5), np.array([0.0, 1.0, -2.0]), 1.0, np.random.default_rng(0)
    )
    # Row means follow the shifted ramp: columns 2..6, 3..7 and 0..4.
    expected = np.array([4000.0, 5000.0, 2000.0])
    np.testing.assert_allclose(out.mean(1), expected, rtol=0.03)
