"""Property tests of ``validate``: it passes exactly the values inside the documented ranges.

For arbitrary numbers (NaN, infinities, negatives, huge values, range edges and their float
neighbours) in every numeric field of every command, ``validate`` either passes, and then the
value is inside the documented range, or raises ``CommandLimitError`` -- never anything else --
whose message names the command, the field, the value, the unit and the allowed range. It passes
*every* in-range value too, and the state handed to it is equal before and after.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopegym.instrument import (
    TUNABLE_ABERRATIONS,
    Command,
    CommandLimitError,
    CommandTypeError,
    InstrumentLimits,
    InstrumentState,
    Move,
    Range,
    Ronchigram,
    SampleSpec,
    Scan,
    Shift,
    Spectrum,
    Tune,
    UnknownAberrationError,
    UnknownCommandError,
    Zoom,
    canonical_aberration,
    validate,
)
from scopegym.instrument.errors import format_number
from scopegym.instrument.limits import MAX_SAMPLE_SEED, validate_sample

LIMITS = InstrumentLimits()
FAST = settings(max_examples=200, deadline=None)


def _neighbours(values: list[float]) -> list[float]:
    """The values and their nearest floats on either side."""
    return [
        float(near)
        for value in values
        for near in (np.nextafter(value, -np.inf), value, np.nextafter(value, np.inf))
    ]


def _edges(*ranges: Range) -> list[float]:
    return _neighbours([bound for span in ranges for bound in (span.low, span.high, -span.low)])


EDGES = _edges(
    LIMITS.size_px,
    LIMITS.dwell_us,
    LIMITS.fov_nm,
    LIMITS.stage_x_nm,
    LIMITS.move_nm,
    LIMITS.exposure_ms,
    LIMITS.spectrum_position,
    LIMITS.shift_nm,
    *LIMITS.tune_delta_nm.values(),
)

# Integers are kept to the range floats hold exactly; larger ones are a construction-time type
# error (lossy coercion), which test_commands covers.
any_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e7, max_value=1e7),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.sampled_from(EDGES),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324]),
)


def numbers_near(*ranges: Range) -> st.SearchStrategy[float]:
    """Any number, with the edges of ``ranges`` (and their float neighbours) drawn often."""
    return st.one_of(st.sampled_from(_edges(*ranges)), any_number)


def in_range_or_at_edge(span: Range) -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from([span.low, span.high]), st.floats(min_value=span.low, max_value=span.high)
    )


@st.composite
def states(draw: st.DrawFn) -> InstrumentState:
    """Instrument states inside the default limits, as a twin would report them."""
    stage = in_range_or_at_edge(LIMITS.stage_x_nm)
    shift = in_range_or_at_edge(LIMITS.shift_nm)
    aberrations = {
        name: draw(in_range_or_at_edge(LIMITS.aberration_nm[name])) for name in TUNABLE_ABERRATIONS
    }
    return InstrumentState(
        stage_x_nm=draw(stage),
        stage_y_nm=draw(stage),
        fov_nm=draw(st.floats(min_value=1.0, max_value=4000.0)),
        aberrations_nm=aberrations,
        voltage_kV=draw(st.sampled_from([60.0, 80.0, 200.0, 300.0])),
        convergence_mrad=draw(st.floats(min_value=5.0, max_value=40.0)),
        beam_current_pA=draw(st.floats(min_value=1.0, max_value=500.0)),
        elapsed_s=draw(st.floats(min_value=0.0, max_value=1e5)),
        dose_e_per_A2=draw(st.floats(min_value=0.0, max_value=1e8)),
        electrons=draw(st.floats(min_value=0.0, max_value=1e15)),
        n_scans=draw(st.integers(min_value=0, max_value=10**4)),
        n_spectra=draw(st.integers(min_value=0, max_value=10**4)),
        shift_x_nm=draw(shift),
        shift_y_nm=draw(shift),
    )


def inside(value: float, span: Range) -> bool:
    return math.isfinite(value) and span.low <= value <= span.high


def check_contract(
    command: Command,
    field: str,
    unit: str,
    state: InstrumentState,
    expected_inside: bool,
    limits: InstrumentLimits = LIMITS,
) -> None:
    """Validate ``command`` and hold the outcome to the contract of ``validate``."""
    state_before = copy.deepcopy(state)
    command_before = repr(command)
    try:
        validate(command, state, limits)
    except CommandLimitError as error:
        message = str(error)
        assert expected_inside is False, message
        assert (error.command, error.field, error.unit) == (command.name, field, unit)
        assert message.startswith(f"{command.name}.{field} = ")
        assert f" {unit} " in message
        assert format_number(getattr(command, field)) in message
        assert error.allowed in message
        if not math.isfinite(getattr(command, field)):
            assert "not a finite number" in message
    else:
        assert expected_inside is True, f"{command!r} passed but is outside the documented range"
    assert state == state_before
    assert repr(command) == command_before


@FAST
@given(value=numbers_near(LIMITS.dwell_us), state=states())
def test_scan_dwell(value: float, state: InstrumentState) -> None:
    command = Scan(256, value)
    check_contract(command, "dwell_us", "us", state, inside(command.dwell_us, LIMITS.dwell_us))


@FAST
@given(
    value=st.one_of(
        numbers_near(LIMITS.size_px), st.integers(min_value=-(10**30), max_value=10**30)
    ),
    state=states(),
)
def test_scan_size(value: float, state: InstrumentState) -> None:
    try:
        command = Scan(value, 10.0)  # type: ignore[arg-type]  # floats are part of the test
    except CommandTypeError as error:
        # Only values that are not whole numbers may fail to become an int.
        assert isinstance(value, float) and not value.is_integer()
        assert "Scan.size_px" in str(error)
        return
    assert type(command.size_px) is int
    check_contract(command, "size_px", "px", state, command.size_px in LIMITS.size_px)


@FAST
@given(value=numbers_near(LIMITS.fov_nm), state=states())
def test_zoom_fov(value: float, state: InstrumentState) -> None:
    command = Zoom(value)
    check_contract(command, "fov_nm", "nm", state, inside(command.fov_nm, LIMITS.fov_nm))


@FAST
@given(data=st.data(), state=states(), along_y=st.booleans())
def test_move(data: st.DataObject, state: InstrumentState, along_y: bool) -> None:
    position_nm = state.stage_y_nm if along_y else state.stage_x_nm
    stage_range = LIMITS.stage_y_nm if along_y else LIMITS.stage_x_nm
    # Steps that land exactly on, or just beyond, the edges of the stage range.
    landing = _neighbours([stage_range.low - position_nm, stage_range.high - position_nm])
    value = data.draw(st.one_of(st.sampled_from(landing), numbers_near(LIMITS.move_nm)))
    command = Move(0.0, value) if along_y else Move(value, 0.0)
    step_nm = command.dy_nm if along_y else command.dx_nm
    expected = inside(abs(step_nm), LIMITS.move_nm) and inside(position_nm + step_nm, stage_range)
    check_contract(command, "dy_nm" if along_y else "dx_nm", "nm", state, expected)


@FAST
@given(data=st.data(), state=states(), along_y=st.booleans())
def test_shift(data: st.DataObject, state: InstrumentState, along_y: bool) -> None:
    present_nm = state.shift_y_nm if along_y else state.shift_x_nm
    span = LIMITS.shift_nm
    # Steps that take the accumulated shift exactly to, or just beyond, the edges of its range.
    landing = _neighbours([span.low - present_nm, span.high - present_nm])
    value = data.draw(st.one_of(st.sampled_from(landing), numbers_near(span)))
    command = Shift(0.0, value) if along_y else Shift(value, 0.0)
    step_nm = command.dy_nm if along_y else command.dx_nm
    expected = math.isfinite(step_nm) and inside(present_nm + step_nm, span)
    check_contract(command, "dy_nm" if along_y else "dx_nm", "nm", state, expected)


@FAST
@given(data=st.data(), state=states(), field=st.sampled_from(["x", "y", "exposure_ms"]))
def test_spectrum(data: st.DataObject, state: InstrumentState, field: str) -> None:
    span = LIMITS.exposure_ms if field == "exposure_ms" else LIMITS.spectrum_position
    value = data.draw(numbers_near(span))
    fields = {"x": 0.5, "y": 0.5, "exposure_ms": 10.0, field: value}
    command = Spectrum(**fields)
    unit = span.unit
    check_contract(command, field, unit, state, inside(getattr(command, field), span))


@FAST
@given(value=numbers_near(LIMITS.exposure_ms), state=states())
def test_ronchigram_exposure(value: float, state: InstrumentState) -> None:
    command = Ronchigram(value, 64)
    check_contract(
        command, "exposure_ms", "ms", state, inside(command.exposure_ms, LIMITS.exposure_ms)
    )


@FAST
@given(
    value=st.one_of(
        numbers_near(LIMITS.size_px), st.integers(min_value=-(10**30), max_value=10**30)
    ),
    state=states(),
)
def test_ronchigram_size(value: float, state: InstrumentState) -> None:
    # The camera shares the frame sizes of the limits.
    try:
        command = Ronchigram(10.0, value)  # type: ignore[arg-type]  # floats are part of the test
    except CommandTypeError as error:
        assert isinstance(value, float) and not value.is_integer()
        assert "Ronchigram.size_px" in str(error)
        return
    assert type(command.size_px) is int
    check_contract(command, "size_px", "px", state, command.size_px in LIMITS.size_px)


@FAST
@given(
    exposure=numbers_near(LIMITS.exposure_ms),
    size=numbers_near(LIMITS.size_px).filter(lambda v: math.isfinite(v) and float(v).is_integer()),
    state=states(),
)
def test_ronchigram_with_both_fields_out_of_range_names_one_of_them(
    exposure: float, size: float, state: InstrumentState
) -> None:
    command = Ronchigram(exposure, int(size))
    size_ok = command.size_px in LIMITS.size_px
    exposure_ok = inside(command.exposure_ms, LIMITS.exposure_ms)
    try:
        validate(command, state, LIMITS)
    except CommandLimitError as error:
        assert not (size_ok and exposure_ok)
        # The size is checked first, as for a Scan.
        assert error.field == ("exposure_ms" if size_ok else "size_px")
    else:
        assert size_ok and exposure_ok


@FAST
@given(data=st.data(), state=states(), aberration=st.sampled_from(TUNABLE_ABERRATIONS))
def test_tune(data: st.DataObject, state: InstrumentState, aberration: str) -> None:
    current_nm = state.aberrations_nm[aberration]
    bounds = LIMITS.aberration_nm[aberration]
    # Deltas that take the coefficient exactly to, or just beyond, its absolute bounds.
    landing = _neighbours([bounds.low - current_nm, bounds.high - current_nm])
    delta_range = LIMITS.tune_delta_nm[aberration]
    value = data.draw(st.one_of(st.sampled_from(landing), numbers_near(delta_range)))
    command = Tune(aberration, value)
    target_nm = state.aberrations_nm[aberration] + command.delta_nm
    expected = inside(command.delta_nm, LIMITS.tune_delta_nm[aberration]) and inside(
        target_nm, LIMITS.aberration_nm[aberration]
    )
    check_contract(command, "delta_nm", "nm", state, expected)


@st.composite
def ranges(draw: st.DrawFn, unit: str) -> Range:
    bounds = sorted(draw(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2)))
    return Range(bounds[0], bounds[1], unit)


@FAST
@given(
    data=st.data(),
    state=states(),
    fov=ranges("nm"),
    dwell=ranges("us"),
    use_zoom=st.booleans(),
)
def test_instrument_specific_limits(
    data: st.DataObject, state: InstrumentState, fov: Range, dwell: Range, use_zoom: bool
) -> None:
    limits = InstrumentLimits(fov_nm=fov, dwell_us=dwell)
    value = data.draw(numbers_near(fov if use_zoom else dwell))
    if use_zoom:
        zoom = Zoom(value)
        check_contract(zoom, "fov_nm", "nm", state, inside(zoom.fov_nm, fov), limits)
    else:
        scan = Scan(64, value)
        check_contract(scan, "dwell_us", "us", state, inside(scan.dwell_us, dwell), limits)


COMMAND_BUILDERS: list[Callable[[float], Command]] = [
    lambda v: Scan(256, v),
    Zoom,
    lambda v: Move(v, -v),
    lambda v: Spectrum(v, v, v),
    lambda v: Tune("defocus", v),
    Ronchigram,
    lambda v: Ronchigram(v, 256),
    lambda v: Shift(-v, v),
]


@FAST
@given(value=any_number, build=st.sampled_from(COMMAND_BUILDERS))
def test_serialisation_round_trip_keeps_every_value(
    value: float, build: Callable[[float], Command]
) -> None:
    command = build(value)
    assert repr(Command.from_dict(command.to_dict())) == repr(command)


def test_limits_round_trip_through_plain_values():
    import json

    from scopegym.instrument import InstrumentLimits, Range, limits_from_dict

    limits = InstrumentLimits(fov_nm=Range(2.0, 500.0, "nm"), detectors=("haadf", "bf"))
    record = json.loads(json.dumps(limits.to_dict()))
    assert record["fov_nm"] == [2.0, 500.0, "nm"]
    assert limits_from_dict(record) == limits


# -- samples (issue 12, item 2) ----------------------------------------------------------------


@FAST
@given(
    name=st.sampled_from([*TUNABLE_ABERRATIONS, "defocus", "Cs", "coma_a", "C50", "C34a"]),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(EDGES),
        st.integers(min_value=-(10**400), max_value=10**400),
    ),
    seed=st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.booleans()),
)
def test_validate_sample_passes_exactly_the_samples_inside_the_limits(name, value, seed):
    sample = SampleSpec("graphene", seed, {name: value})
    coefficient = canonical_aberration(name)
    bounds = LIMITS.aberration_nm.get(coefficient)
    seed_ok = not isinstance(seed, bool) and 0 <= seed <= MAX_SAMPLE_SEED
    value_ok = bounds is not None and value in bounds  # NaN and infinities never are
    try:
        checked = validate_sample(sample, LIMITS)
    except CommandTypeError as error:
        assert isinstance(seed, bool) and "load_sample.seed" in str(error)
    except CommandLimitError as error:
        assert not (seed_ok and value_ok)
        assert str(error).startswith("load_sample.")
        assert len(str(error)) < 500  # a 400-digit value is described, not written out
    else:
        assert seed_ok and value_ok
        assert checked.seed == seed and checked.aberrations_nm == {coefficient: float(value)}
        assert checked.family == "graphene"


def test_validate_sample_names_what_is_wrong():
    cases = {
        "load_sample.aberrations_nm.C10 = 1000000000000 nm is outside the allowed range "
        "[-5000, 5000] nm": SampleSpec("g", 1, {"C10": 1e12}),
        "load_sample.aberrations_nm.C50 = 1 nm has no bound on this instrument": SampleSpec(
            "g", 1, {"C5": 1.0}
        ),
        "load_sample.aberrations_nm.C10 must be given once; 'defocus' names C10": SampleSpec(
            "g", 1, {"C10": 1.0, "defocus": 2.0}
        ),
        "load_sample.aberrations_nm.C12a must be a real number [nm]; got 'x'": SampleSpec(
            "g", 1, {"C12a": "x"}
        ),
        "load_sample.seed = -1 is outside the allowed range [0, 2**63 - 1]": SampleSpec("g", -1),
        "load_sample.seed must be a whole number; got 1.5 (float)": SampleSpec("g", 1.5),
        "load_sample.aberrations_nm must be a mapping": SampleSpec("g", 1, [("C10", 1.0)]),
    }
    for message, sample in cases.items():
        with pytest.raises((CommandLimitError, CommandTypeError)) as refused:
            validate_sample(sample, LIMITS)
        assert str(refused.value).startswith(message), str(refused.value)
    with pytest.raises(UnknownAberrationError):
        validate_sample(SampleSpec("g", 1, {"Cxx": 1.0}), LIMITS)


def test_refusals_quote_megabyte_values_in_a_few_hundred_characters():
    huge_text, huge_number = "x" * 1_000_000, 10**5000
    errors = [
        CommandTypeError("Zoom", "fov_nm", huge_text, "a real number"),
        CommandLimitError("Zoom", "fov_nm", huge_number, "nm", "[1, 4000] nm"),
        UnknownCommandError(huge_text, ("Scan", "Zoom")),
        UnknownAberrationError(huge_text, ("C10",), ("defocus",)),
    ]
    for error in errors:
        assert len(str(error)) < 600, type(error).__name__
    assert "(1000002 characters)" in str(errors[0])
    assert "integer of 16610 bits" in str(errors[1])
    with pytest.raises(CommandTypeError) as refused:
        Zoom(huge_number)  # refused as it is made, in a short message too
    assert len(str(refused.value)) < 600
