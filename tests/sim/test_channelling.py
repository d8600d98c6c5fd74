import numpy as np
import pytest

from scopegym.sim import channelling
from scopegym.sim.imaging import RasterGeometry, RasterTiming, scattered_fraction
from scopegym.sim.optics import Optics
from scopegym.sim.scattering import haadf_cross_section_nm2
from scopegym.sim.specimen import Specimen

STILL = RasterTiming(line_jitter_nm=0.0)
A_NM = 0.3905


def _geometry(center, fov_nm, size_px):
    return RasterGeometry(
        center_nm=center,
        fov_nm=fov_nm,
        size_px=size_px,
        dwell_us=1.0,
        line_drift_nm=np.zeros((size_px, 2)),
        line_velocity_nm_per_s=np.zeros((size_px, 2)),
        line_jitter_nm=np.zeros(size_px),
    )


def _cell_rows(cells):
    """One SrTiO3 unit cell's rows: Sr, Ti and O of the TiO column, two O columns."""
    xy = np.array([[0.0, 0.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.0], [0.0, 0.5]]) * A_NM
    numbers = np.array([38, 22, 8, 8, 8])
    return xy, numbers, np.full(5, float(cells)), np.full(5, float(cells))


def test_the_table_ships_with_the_package():
    assert channelling.has_table()


def test_rows_of_one_column_share_its_efficiency_and_kernel():
    xy, numbers, counts, cells = _cell_rows(20)
    weights, kinds = channelling.thick_columns(xy, numbers, counts, cells, 200.0)
    sigma = np.array([haadf_cross_section_nm2(int(z), 200.0) for z in numbers]) * counts
    efficiency = weights / sigma
    assert efficiency[1] == pytest.approx(efficiency[2])  # Ti and O of the TiO column
    assert kinds[1] == kinds[2]
    assert efficiency[3] == pytest.approx(efficiency[4])
    # Three column types, three kernels, in strength order: O < TiO < Sr.
    assert len(set(kinds.tolist())) == 3
    assert kinds[3] < kinds[1] < kinds[0]
    assert len(channelling.column_kernels(200.0, 20)) == 3


def test_a_dopant_column_takes_its_hosts_kernel_and_an_efficiency_near_it():
    cells = 20.0
    xy = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    numbers = np.array([57, 38, 38])  # one La in a Sr column, and a pure Sr column
    counts = np.array([1.0, cells - 1.0, cells])
    weights, kinds = channelling.thick_columns(xy, numbers, counts, np.full(3, cells), 200.0)
    assert kinds[0] == kinds[1] == kinds[2]
    sigma = np.array([haadf_cross_section_nm2(int(z), 200.0) for z in numbers]) * counts
    doped, pure = weights[:2].sum() / sigma[:2].sum(), weights[2] / sigma[2]
    assert doped == pytest.approx(pure, rel=0.05)


def test_thick_columns_grow_less_than_linearly_with_thickness():
    """Frozen-phonon multislice: 4x the cells gives well under 4x the integrated signal."""

    def sr_weight(cells):
        xy, numbers, counts, n = _cell_rows(cells)
        return channelling.thick_columns(xy, numbers, counts, n, 200.0)[0][0]

    assert sr_weight(52) / sr_weight(13) < 0.85 * 4.0
    assert sr_weight(52) > sr_weight(13)


def test_kernel_transfer_is_one_at_zero_frequency_and_falls():
    for kernel in channelling.column_kernels(200.0, 30):
        k2 = np.array([0.0, 1.0, 100.0, 1e4])
        transfer = kernel.transfer(k2)
        assert transfer[0] == pytest.approx(1.0)
        assert np.all(np.diff(transfer) <= 0.0)
        assert 0.0 <= kernel.broad_fraction < 1.0


def test_signal_between_columns_grows_with_thickness_relative_to_the_columns():
    specimen = Specimen("srtio3", seed=0)
    optics = Optics(voltage_kV=200.0, convergence_mrad=30.0)
    contrasts = []
    for x in (150.0, 1700.0):  # thin (about 7 nm) and thick (about 35 nm) ends of the wedge
        image = scattered_fraction(specimen, optics, _geometry((x, 1000.0), 3.0, 96), STILL)
        contrasts.append(np.percentile(image, 5) / np.percentile(image, 99.5))
    assert contrasts[1] > 1.5 * contrasts[0]


def test_low_magnification_srtio3_has_the_mean_of_the_atomic_image():
    specimen = Specimen("srtio3", seed=0)
    optics = Optics(voltage_kV=200.0, convergence_mrad=30.0)
    center = (1004.0, 1004.0)
    atomic = scattered_fraction(specimen, optics, _geometry(center, 8.0, 256), STILL)
    coarse = scattered_fraction(specimen, optics, _geometry(center, 8.0, 32), STILL)
    assert coarse.mean() == pytest.approx(atomic.mean(), rel=0.1)


def test_without_the_table_columns_scale_linearly(monkeypatch):
    specimen = Specimen("srtio3", seed=0)
    optics = Optics(voltage_kV=200.0, convergence_mrad=30.0)
    xy = np.array([[500.0, 500.0]])
    with_table = specimen.areal_scattering(xy, 200.0)
    monkeypatch.setattr(channelling, "has_table", lambda: False)
    linear = specimen.areal_scattering(xy, 200.0)
    assert with_table[0] != pytest.approx(linear[0], rel=0.02)
    image = scattered_fraction(specimen, optics, _geometry((500.0, 500.0), 2.0, 64), STILL)
    assert np.isfinite(image).all()
