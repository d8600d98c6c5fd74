"""Unit tests of the instrument hyper-language: commands, errors, results, limits, protocol."""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from scopegym.instrument import (
    ABERRATION_ALIASES,
    ABERRATION_NAMES,
    COMMAND_TYPES,
    TUNABLE_ABERRATIONS,
    Command,
    CommandError,
    CommandLimitError,
    CommandTypeError,
    EELSSpectrum,
    Frame,
    Instrument,
    InstrumentError,
    InstrumentLimits,
    InstrumentState,
    Move,
    Range,
    Result,
    Ronchigram,
    RonchigramImage,
    Scan,
    Shift,
    Spectrum,
    Tune,
    UnknownAberrationError,
    UnknownCommandError,
    Zoom,
    canonical_aberration,
    expected_result_type,
    limits_from_dict,
    result_from_dict,
    validate,
)

EXAMPLE_COMMANDS: list[Command] = [
    Scan(256, 8.0),
    Scan(512, 32.0, "haadf"),
    Zoom(120.0),
    Move(-35.5, 1e4),
    Spectrum(0.25, 0.75, 50.0),
    Tune("C10", -12.5),
    Tune("C30", 1000.0),
    Ronchigram(5.0),
    Ronchigram(0.5, 64),
    Shift(12.5, -250.0),
]


def make_state(**changes: Any) -> InstrumentState:
    values: dict[str, Any] = {
        "stage_x_nm": 0.0,
        "stage_y_nm": 0.0,
        "fov_nm": 100.0,
        "voltage_kV": 200.0,
        "convergence_mrad": 30.0,
        "beam_current_pA": 30.0,
    }
    values.update(changes)
    return InstrumentState(**values)


def make_frame(**changes: Any) -> Frame:
    values: dict[str, Any] = {
        "counts": np.arange(16, dtype=np.float64).reshape(4, 4),
        "fov_nm": 8.0,
        "stage_x_nm": 1.0,
        "stage_y_nm": -2.0,
        "dwell_us": 4.0,
        "dose_e_per_A2": 12.0,
        "start_time_s": 10.0,
        "end_time_s": 10.5,
    }
    values.update(changes)
    return Frame(**values)


def make_ronchigram(**changes: Any) -> RonchigramImage:
    values: dict[str, Any] = {
        "counts": np.arange(64, dtype=np.float64).reshape(8, 8),
        "max_angle_mrad": 60.0,
        "exposure_ms": 5.0,
        "stage_x_nm": 1.0,
        "stage_y_nm": 2.0,
        "dose_e_per_A2": 1e5,
        "start_time_s": 3.0,
        "end_time_s": 3.007,
    }
    values.update(changes)
    return RonchigramImage(**values)


def make_spectrum(**changes: Any) -> EELSSpectrum:
    values: dict[str, Any] = {
        "energy_eV": np.linspace(100.0, 600.0, 501),
        "counts": np.ones(501),
        "x": 0.5,
        "y": 0.25,
        "exposure_ms": 20.0,
        "stage_x_nm": 0.0,
        "stage_y_nm": 0.0,
        "dose_e_per_A2": 3.0,
        "start_time_s": 1.0,
        "end_time_s": 1.02,
    }
    values.update(changes)
    return EELSSpectrum(**values)


# --- commands: construction and coercion ---------------------------------------------------


def test_fields_and_defaults() -> None:
    scan = Scan(256, 8.0)
    assert (scan.size_px, scan.dwell_us, scan.detector) == (256, 8.0, "haadf")
    assert Zoom(50.0).fov_nm == 50.0
    assert (Move(1.0, -2.0).dx_nm, Move(1.0, -2.0).dy_nm) == (1.0, -2.0)
    spectrum = Spectrum(0.1, 0.9, 5.0)
    assert (spectrum.x, spectrum.y, spectrum.exposure_ms) == (0.1, 0.9, 5.0)
    assert (Tune("C12a", 3.0).aberration, Tune("C12a", 3.0).delta_nm) == ("C12a", 3.0)
    assert (Shift(4, -2.5).dx_nm, Shift(4, -2.5).dy_nm) == (4.0, -2.5)
    assert type(Shift(4, 0).dx_nm) is float


@pytest.mark.parametrize("command", EXAMPLE_COMMANDS, ids=repr)
def test_name_is_class_name(command: Command) -> None:
    assert command.name == type(command).__name__


def build(command_type: Any, *args: Any) -> Any:
    """Construct a command from arguments of any type, which the type checker would refuse."""
    return command_type(*args)


def test_lossless_coercion() -> None:
    zoom = build(Zoom, 100)
    assert type(zoom.fov_nm) is float and zoom.fov_nm == 100.0
    assert type(build(Zoom, np.float32(0.5)).fov_nm) is float
    assert type(build(Zoom, np.float64(0.1)).fov_nm) is float
    assert build(Move, np.int64(7), Fraction(1, 2)).to_dict() == {
        "command": "Move",
        "dx_nm": 7.0,
        "dy_nm": 0.5,
    }
    scan = build(Scan, 256.0, 8)
    assert type(scan.size_px) is int and scan.size_px == 256
    assert type(build(Scan, np.int32(64), 1.0).size_px) is int
    assert Scan(128, 1.0, np.str_("haadf")).detector == "haadf"


def test_non_finite_floats_are_accepted_at_construction() -> None:
    # Ranges, including finiteness, are validate's job, not the constructor's.
    assert np.isnan(Zoom(float("nan")).fov_nm)
    assert Move(float("inf"), -float("inf")).dx_nm == float("inf")


@pytest.mark.parametrize(
    ("command_type", "args", "field", "bad"),
    [
        (Zoom, ("12",), "fov_nm", "'12'"),
        (Zoom, (None,), "fov_nm", "None"),
        (Zoom, (True,), "fov_nm", "True"),
        (Zoom, (1 + 2j,), "fov_nm", "(1+2j)"),
        (Move, (1.0, [2.0]), "dy_nm", "[2.0]"),
        (Move, (2**53 + 1, 0.0), "dx_nm", str(2**53 + 1)),
        (Move, (Fraction(1, 3), 0.0), "dx_nm", "Fraction(1, 3)"),
        (Scan, (256.5, 8.0), "size_px", "256.5"),
        (Scan, (float("nan"), 8.0), "size_px", "nan"),
        (Scan, (False, 8.0), "size_px", "False"),
        (Scan, ("256", 8.0), "size_px", "'256'"),
        (Scan, (256, 8.0, 3), "detector", "3"),
        (Spectrum, (0.5, np.bool_(True), 1.0), "y", "True"),
        (Tune, (10, 1.0), "aberration", "10"),
        (Tune, ("C10", "1"), "delta_nm", "'1'"),
    ],
)
def test_bad_types_raise_command_type_error(
    command_type: type[Command], args: tuple[Any, ...], field: str, bad: str
) -> None:
    with pytest.raises(CommandTypeError) as caught:
        build(command_type, *args)
    message = str(caught.value)
    assert message.startswith(f"{command_type.__name__}.{field} must be ")
    assert caught.value.command == command_type.__name__
    assert bad in message
    assert caught.value.field == field
    assert isinstance(caught.value, CommandError) and isinstance(caught.value, TypeError)


def test_command_base_is_not_instantiable() -> None:
    with pytest.raises(TypeError, match="abstract"):
        Command()


@pytest.mark.parametrize("command", EXAMPLE_COMMANDS, ids=repr)
def test_commands_are_frozen_and_slotted(command: Command) -> None:
    first_field = dataclasses.fields(command)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(command, first_field, 1.0)
    assert not hasattr(command, "__dict__")
    assert hash(command) == hash(Command.from_dict(command.to_dict()))


# --- commands: serialisation ---------------------------------------------------------------


@pytest.mark.parametrize("command", EXAMPLE_COMMANDS, ids=repr)
def test_to_dict_from_dict_round_trip(command: Command) -> None:
    record = command.to_dict()
    assert record["command"] == command.name
    assert set(record) == {"command"} | {spec.name for spec in dataclasses.fields(command)}
    assert Command.from_dict(record) == command
    assert type(command).from_dict(record) == command
    assert Command.from_dict(json.loads(json.dumps(record))) == command
    assert pickle.loads(pickle.dumps(command)) == command


def test_every_command_type_has_an_example() -> None:
    assert {command.name for command in EXAMPLE_COMMANDS} == set(COMMAND_TYPES)


def test_from_dict_on_subclass_may_omit_command_key() -> None:
    assert Zoom.from_dict({"fov_nm": 5}) == Zoom(5.0)


def test_from_dict_applies_defaults_and_coercion() -> None:
    assert Command.from_dict({"command": "Scan", "size_px": 64.0, "dwell_us": 2}) == Scan(64, 2.0)


def test_from_dict_canonicalises_aliases() -> None:
    assert Command.from_dict({"command": "Tune", "aberration": "Cs", "delta_nm": 5}) == Tune(
        "C30", 5.0
    )


def test_from_dict_unknown_command() -> None:
    with pytest.raises(UnknownCommandError, match="'Focus'.*Scan, Zoom, Move, Spectrum, Tune"):
        Command.from_dict({"command": "Focus", "value": 1})
    with pytest.raises(UnknownCommandError):
        Command.from_dict({"fov_nm": 1.0})


def test_from_dict_wrong_subclass() -> None:
    with pytest.raises(CommandTypeError, match="Zoom.command"):
        Zoom.from_dict(Move(1.0, 2.0).to_dict())


def test_from_dict_missing_field() -> None:
    with pytest.raises(CommandTypeError, match="Move.dy_nm must be given"):
        Command.from_dict({"command": "Move", "dx_nm": 1.0})


def test_from_dict_unknown_field() -> None:
    with pytest.raises(CommandTypeError, match="Zoom.zoom_factor.*no such field"):
        Command.from_dict({"command": "Zoom", "fov_nm": 1.0, "zoom_factor": 2})


def test_from_dict_not_a_mapping() -> None:
    with pytest.raises(CommandTypeError, match="a mapping"):
        Command.from_dict([("command", "Zoom")])  # type: ignore[arg-type]


# --- aberration names ----------------------------------------------------------------------


def test_aberration_tables_are_consistent() -> None:
    assert set(TUNABLE_ABERRATIONS) <= set(ABERRATION_NAMES)
    assert set(ABERRATION_ALIASES.values()) <= set(ABERRATION_NAMES)
    assert len(set(ABERRATION_NAMES)) == len(ABERRATION_NAMES) == 13


@pytest.mark.parametrize("name", ABERRATION_NAMES)
def test_canonical_names_map_to_themselves(name: str) -> None:
    assert canonical_aberration(name) == name


@pytest.mark.parametrize(("alias", "name"), sorted(ABERRATION_ALIASES.items()))
def test_aliases_are_canonicalised_in_tune(alias: str, name: str) -> None:
    assert canonical_aberration(alias) == name
    tune = Tune(alias, 2.0)
    assert tune.aberration == name
    assert tune.to_dict()["aberration"] == name


def test_defocus_is_c10_with_the_same_sign() -> None:
    assert Tune("defocus", 4.0) == Tune("C10", 4.0)


def test_word_aliases_ignore_case() -> None:
    assert canonical_aberration("Defocus") == "C10"
    assert canonical_aberration("COMA_B") == "C21b"


@pytest.mark.parametrize("name", ["c10", "C12", "C12A", "CS", "c3", "focus", "", "C99"])
def test_symbols_are_case_sensitive_and_unknown_names_raise(name: str) -> None:
    with pytest.raises(UnknownAberrationError) as caught:
        canonical_aberration(name)
    message = str(caught.value)
    assert repr(name) in message
    for listed in (*ABERRATION_NAMES, *ABERRATION_ALIASES):
        assert listed in message
    assert isinstance(caught.value, CommandError) and isinstance(caught.value, ValueError)


def test_tune_with_unknown_aberration_raises_at_construction() -> None:
    with pytest.raises(UnknownAberrationError, match="'C99'"):
        Tune("C99", 1.0)


# --- errors --------------------------------------------------------------------------------


def test_errors_survive_pickling() -> None:
    errors: list[Exception] = [
        CommandLimitError("Zoom", "fov_nm", 0.2, "nm", "[1, 4000] nm"),
        CommandTypeError("Zoom", "fov_nm", "x", "a real number"),
        UnknownCommandError("Focus", ("Zoom",)),
        UnknownAberrationError("C99", ABERRATION_NAMES, ("defocus",)),
        InstrumentError("lost connection"),
    ]
    for error in errors:
        restored = pickle.loads(pickle.dumps(error))
        assert type(restored) is type(error)
        assert str(restored) == str(error)


def test_limit_error_attributes_and_hierarchy() -> None:
    error = CommandLimitError("Zoom", "fov_nm", 0.2, "nm", "[1, 4000] nm")
    assert (error.command, error.field, error.value, error.unit, error.allowed) == (
        "Zoom",
        "fov_nm",
        0.2,
        "nm",
        "[1, 4000] nm",
    )
    assert isinstance(error, CommandError) and isinstance(error, ValueError)
    assert not issubclass(InstrumentError, CommandError)


# --- validate: messages --------------------------------------------------------------------

LIMITS = InstrumentLimits()


def refusal(command: Command, state: InstrumentState | None = None) -> CommandLimitError:
    with pytest.raises(CommandLimitError) as caught:
        validate(command, state or make_state(), LIMITS)
    return caught.value


def test_message_example_from_the_specification() -> None:
    assert (
        str(refusal(Zoom(0.2))) == "Zoom.fov_nm = 0.2 nm is outside the allowed range [1, 4000] nm"
    )


@pytest.mark.parametrize(
    ("command", "field", "value_text", "unit", "allowed"),
    [
        (Scan(8, 1.0), "size_px", "8", "px", "[16, 2048] px"),
        (Scan(4096, 1.0), "size_px", "4096", "px", "[16, 2048] px"),
        (Scan(256, 0.01), "dwell_us", "0.01", "us", "[0.1, 1000] us"),
        (Scan(256, -5.0), "dwell_us", "-5", "us", "[0.1, 1000] us"),
        (Zoom(1e5), "fov_nm", "100000", "nm", "[1, 4000] nm"),
        (Zoom(-10.0), "fov_nm", "-10", "nm", "[1, 4000] nm"),
        (Move(3e5, 0.0), "dx_nm", "300000", "nm", "[0, 200000] nm"),
        (Move(0.0, -2.5e5), "dy_nm", "-250000", "nm", "[0, 200000] nm"),
        (Spectrum(1.5, 0.5, 1.0), "x", "1.5", "fraction of field of view", "[0, 1]"),
        (Spectrum(0.5, -0.1, 1.0), "y", "-0.1", "fraction of field of view", "[0, 1]"),
        (Spectrum(0.5, 0.5, 2e4), "exposure_ms", "20000", "ms", "[0.1, 10000] ms"),
        (Ronchigram(0.01), "exposure_ms", "0.01", "ms", "[0.1, 10000] ms"),
        (Ronchigram(1.0, 8), "size_px", "8", "px", "[16, 2048] px"),
        (Tune("C10", 600.0), "delta_nm", "600", "nm", "[-500, 500] nm"),
        (Tune("C12b", -250.0), "delta_nm", "-250", "nm", "[-200, 200] nm"),
        (Tune("C30", 6e4), "delta_nm", "60000", "nm", "[-50000, 50000] nm"),
        (Shift(250.5, 0.0), "dx_nm", "250.5", "nm", "[-250, 250] nm"),
        (Shift(0.0, -1e4), "dy_nm", "-10000", "nm", "[-250, 250] nm"),
    ],
)
def test_limit_messages_name_command_field_value_unit_and_range(
    command: Command, field: str, value_text: str, unit: str, allowed: str
) -> None:
    error = refusal(command)
    message = str(error)
    assert message.startswith(f"{command.name}.{field} = {value_text} {unit} ")
    assert allowed in message
    assert error.field == field and error.unit == unit and error.command == command.name


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda v: Scan(256, v), "dwell_us"),
        (lambda v: Zoom(v), "fov_nm"),
        (lambda v: Move(v, 0.0), "dx_nm"),
        (lambda v: Move(0.0, v), "dy_nm"),
        (lambda v: Spectrum(v, 0.5, 1.0), "x"),
        (lambda v: Spectrum(0.5, v, 1.0), "y"),
        (lambda v: Spectrum(0.5, 0.5, v), "exposure_ms"),
        (lambda v: Ronchigram(v), "exposure_ms"),
        (lambda v: Tune("C23a", v), "delta_nm"),
        (lambda v: Shift(v, 0.0), "dx_nm"),
        (lambda v: Shift(0.0, v), "dy_nm"),
    ],
)
def test_non_finite_values_are_refused(build: Any, field: str, value: float) -> None:
    error = refusal(build(value))
    assert "not a finite number" in str(error)
    assert f".{field} = {value!r}" in str(error)


def test_move_is_checked_against_the_resulting_reported_position() -> None:
    state = make_state(stage_x_nm=9e5, stage_y_nm=-9.5e5)
    validate(Move(1e5, 0.0), state, LIMITS)
    error = refusal(Move(1.5e5, 0.0), state)
    assert "stage x at 1050000 nm" in str(error) and "[-1000000, 1000000] nm" in str(error)
    error = refusal(Move(0.0, -6e4), state)
    assert error.field == "dy_nm" and "stage y at -1010000 nm" in str(error)


def test_move_with_narrow_instrument_stage_range() -> None:
    limits = InstrumentLimits(stage_x_nm=Range(-500.0, 500.0, "nm"))
    validate(Move(500.0, 0.0), make_state(), limits)
    with pytest.raises(CommandLimitError, match=r"\[-500, 500\] nm"):
        validate(Move(500.5, 0.0), make_state(), limits)


def test_shift_is_checked_against_the_accumulated_shift_not_the_step() -> None:
    # Each step is small; what is bounded is the shift from the optic axis after it.
    state = make_state(shift_x_nm=240.0, shift_y_nm=-250.0)
    validate(Shift(10.0, 0.0), state, LIMITS)
    validate(Shift(-490.0, 500.0), state, LIMITS)
    error = refusal(Shift(10.5, 0.0), state)
    assert str(error) == (
        "Shift.dx_nm = 10.5 nm would take the shift x from 240 nm to 250.5 nm, "
        "outside the allowed range [-250, 250] nm"
    )
    error = refusal(Shift(0.0, -0.5), state)
    assert (error.command, error.field, error.unit) == ("Shift", "dy_nm", "nm")
    assert "shift y from -250 nm to -250.5 nm" in str(error)
    # The stage position plays no part in a shift, and a move does not care about the shift.
    validate(Shift(0.0, 0.0), make_state(stage_x_nm=1e6, shift_x_nm=250.0), LIMITS)
    validate(Move(1e5, 0.0), make_state(shift_x_nm=250.0), LIMITS)


def test_shift_range_is_an_instrument_limit() -> None:
    limits = InstrumentLimits(shift_nm=Range(-50.0, 50.0, "nm"))
    validate(Shift(50.0, -50.0), make_state(), limits)
    with pytest.raises(CommandLimitError, match=r"\[-50, 50\] nm"):
        validate(Shift(50.5, 0.0), make_state(), limits)
    assert InstrumentLimits().shift_nm == Range(-250.0, 250.0, "nm")


def test_limits_without_a_shift_range_keep_the_default() -> None:
    # Records written before Shift existed carry limits without shift_nm.
    record = InstrumentLimits(shift_nm=Range(-9.0, 9.0, "nm")).to_dict()
    assert record["shift_nm"] == [-9.0, 9.0, "nm"]
    assert limits_from_dict(record).shift_nm == Range(-9.0, 9.0, "nm")
    del record["shift_nm"]
    assert limits_from_dict(record) == InstrumentLimits()


def test_state_reports_the_shift_and_old_records_default_to_zero() -> None:
    state = make_state(shift_x_nm=3, shift_y_nm=-4.5)
    assert (state.shift_x_nm, state.shift_y_nm) == (3.0, -4.5)
    assert result_from_dict(state.to_dict()) == state
    assert state != make_state()
    record = make_state().to_dict()
    del record["shift_x_nm"], record["shift_y_nm"]
    assert result_from_dict(record) == make_state()
    frame = make_frame(shift_x_nm=2.0)
    assert result_from_dict(frame.to_dict()) == frame and frame != make_frame()


def test_tune_is_checked_against_the_resulting_coefficient() -> None:
    state = make_state(aberrations_nm={"defocus": 4700.0})
    validate(Tune("C10", 300.0), state, LIMITS)
    error = refusal(Tune("defocus", 400.0), state)
    assert str(error) == (
        "Tune.delta_nm = 400 nm would take C10 from 4700 nm to 5100 nm, "
        "outside the allowed range [-5000, 5000] nm"
    )


def test_untunable_aberration_is_refused() -> None:
    error = refusal(Tune("C50", 1.0))
    assert error.field == "aberration"
    assert "'C50' is not tunable" in str(error)
    for name in TUNABLE_ABERRATIONS:
        assert name in str(error)


def test_unknown_detector_is_refused() -> None:
    error = refusal(Scan(256, 1.0, "bf"))
    assert str(error) == "Scan.detector = 'bf' is not an available detector; available: 'haadf'"
    validate(Scan(256, 1.0, "bf"), make_state(), InstrumentLimits(detectors=("haadf", "bf")))


def test_validate_is_defensive_about_bypassed_construction() -> None:
    scan = Scan(256, 1.0)
    object.__setattr__(scan, "size_px", True)
    assert "not a whole number" in str(refusal(scan))
    object.__setattr__(scan, "size_px", 256.5)
    assert "not a whole number" in str(refusal(scan))
    object.__setattr__(scan, "size_px", float("nan"))
    assert "not a finite number" in str(refusal(scan))
    zoom = Zoom(10.0)
    object.__setattr__(zoom, "fov_nm", "10")
    assert "Zoom.fov_nm = '10' nm is not a real number" in str(refusal(zoom))
    tune = Tune("C10", 1.0)
    object.__setattr__(tune, "aberration", "C99")
    assert refusal(tune).field == "aberration"


def test_validate_rejects_non_commands() -> None:
    with pytest.raises(CommandTypeError):
        validate("Zoom(5)", make_state(), LIMITS)  # type: ignore[arg-type]


@pytest.mark.parametrize("command", EXAMPLE_COMMANDS, ids=repr)
def test_valid_examples_pass_and_change_nothing(command: Command) -> None:
    state = make_state(aberrations_nm={"C10": 3.0})
    state_before = state.to_dict()
    command_before = command.to_dict()
    validate(command, state, LIMITS)
    assert state.to_dict() == state_before
    assert command.to_dict() == command_before


def test_range_edges_are_inclusive() -> None:
    for command in (
        Zoom(1.0),
        Zoom(4000.0),
        Scan(16, 0.1),
        Scan(2048, 1000.0),
        Spectrum(0, 1, 0.1),
    ):
        validate(command, make_state(), LIMITS)


# --- limits --------------------------------------------------------------------------------


def test_range_contains_and_describe() -> None:
    span = Range(1, 4000, "nm")
    assert span.describe() == "[1, 4000] nm"
    assert 1.0 in span and 4000 in span and 0.999 not in span
    assert float("nan") not in span and "5" not in span and True not in span
    assert 10**400 not in Range(-1e308, 1e308, "nm")
    assert Range.symmetric(2.5, "mrad") == Range(-2.5, 2.5, "mrad")
    assert Range(1e-5, 0.1, "s").describe() == "[1e-05, 0.1] s"


def test_range_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="above"):
        Range(2.0, 1.0, "nm")
    with pytest.raises(ValueError):
        Range(float("nan"), 1.0, "nm")


def test_limits_defaults() -> None:
    limits = InstrumentLimits()
    assert limits.size_px.describe() == "[16, 2048] px"
    assert limits.dwell_us.describe() == "[0.1, 1000] us"
    assert limits.fov_nm.describe() == "[1, 4000] nm"
    assert limits.stage_x_nm == limits.stage_y_nm == Range(-1e6, 1e6, "nm")
    assert limits.move_nm == Range(0.0, 2e5, "nm")
    assert limits.exposure_ms == Range(0.1, 10000.0, "ms")
    assert limits.spectrum_position == Range(0.0, 1.0, "fraction of field of view")
    assert limits.detectors == ("haadf",)
    assert set(limits.tune_delta_nm) == set(TUNABLE_ABERRATIONS) == set(limits.aberration_nm)
    expected_tune = {"C10": 500, "C12a": 200, "C21b": 2000, "C23a": 2000, "C30": 5e4}
    for name, half_width in expected_tune.items():
        assert limits.tune_delta_nm[name] == Range.symmetric(half_width, "nm")
    expected_bounds = {"C10": 5000, "C12b": 1000, "C21a": 1e4, "C23b": 1e4, "C30": 2e5}
    for name, half_width in expected_bounds.items():
        assert limits.aberration_nm[name] == Range.symmetric(half_width, "nm")


def test_limits_are_immutable_hashable_and_picklable() -> None:
    limits = InstrumentLimits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.fov_nm = Range(1, 2, "nm")  # type: ignore[misc]
    with pytest.raises(TypeError):
        limits.tune_delta_nm["C10"] = Range(-1, 1, "nm")  # type: ignore[index]
    assert hash(limits) == hash(InstrumentLimits())
    assert pickle.loads(pickle.dumps(limits)) == limits
    assert limits.replace(fov_nm=Range(2, 500, "nm")).fov_nm == Range(2, 500, "nm")
    assert limits.fov_nm == Range(1, 4000, "nm")


def test_limits_do_not_share_state_with_the_given_mapping() -> None:
    given = {"defocus": Range.symmetric(10.0, "nm")}
    limits = InstrumentLimits(tune_delta_nm=given)
    given["C30"] = Range.symmetric(1.0, "nm")
    assert set(limits.tune_delta_nm) == {"C10"}


def test_limits_reject_tunable_coefficient_without_bounds() -> None:
    with pytest.raises(ValueError, match="C50"):
        InstrumentLimits(tune_delta_nm={"C50": Range.symmetric(1.0, "nm")})


# --- results -------------------------------------------------------------------------------


def test_frame_copies_into_a_read_only_float32_array() -> None:
    source = np.arange(16, dtype=np.float64).reshape(4, 4)
    frame = make_frame(counts=source)
    assert frame.counts.dtype == np.float32 and frame.counts.shape == (4, 4)
    assert not frame.counts.flags.writeable
    with pytest.raises(ValueError):
        frame.counts[0, 0] = 1.0
    source[0, 0] = 99.0
    assert frame.counts[0, 0] == 0.0
    assert source.flags.writeable


def test_frame_properties() -> None:
    frame = make_frame()
    assert frame.size_px == 4
    assert frame.pixel_nm == pytest.approx(2.0)
    assert frame.duration_s == pytest.approx(0.5)
    assert frame.detector == "haadf"


@pytest.mark.parametrize("shape", [(4, 5), (16,), (0, 0), (2, 2, 2)])
def test_frame_must_be_square(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="square"):
        make_frame(counts=np.zeros(shape))


def test_spectrum_arrays_and_dispersion() -> None:
    spectrum = make_spectrum()
    assert spectrum.dispersion_eV == pytest.approx(1.0)
    assert spectrum.energy_eV.dtype == spectrum.counts.dtype == np.float32
    assert not spectrum.energy_eV.flags.writeable and not spectrum.counts.flags.writeable
    assert spectrum.duration_s == pytest.approx(0.02)
    with pytest.raises(ValueError, match="shape"):
        make_spectrum(counts=np.ones(500))
    with pytest.raises(ValueError, match="increasing"):
        make_spectrum(energy_eV=np.linspace(600.0, 100.0, 501))


@pytest.mark.parametrize(
    "build", [make_frame, make_spectrum, make_ronchigram, make_state], ids=lambda f: f.__name__
)
def test_results_round_trip(build: Any) -> None:
    result = build()
    record = result.to_dict()
    assert record["result"] == type(result).__name__
    assert not any(isinstance(value, list) for value in record.values())
    assert result_from_dict(record) == result
    assert pickle.loads(pickle.dumps(result)) == result


def test_ronchigram_image_axes_and_checks() -> None:
    image = make_ronchigram()
    assert image.size_px == 8
    assert image.mrad_per_px == pytest.approx(15.0)
    assert image.duration_s == pytest.approx(0.007)
    assert image.counts.dtype == np.float32 and not image.counts.flags.writeable
    assert image != make_ronchigram(max_angle_mrad=50.0)
    with pytest.raises(ValueError, match="square"):
        make_ronchigram(counts=np.zeros((4, 5)))
    with pytest.raises(ValueError, match="positive"):
        make_ronchigram(max_angle_mrad=0.0)


def test_result_equality_looks_at_array_contents() -> None:
    assert make_frame() == make_frame()
    assert make_frame() != make_frame(counts=np.ones((4, 4)))
    assert make_spectrum() != make_spectrum(x=0.6)
    unpickled = pickle.loads(pickle.dumps(make_frame()))
    assert not unpickled.counts.flags.writeable


def test_result_from_dict_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown result"):
        result_from_dict({"result": "Image"})


def test_state_aberrations_are_complete_canonical_and_read_only() -> None:
    state = make_state(aberrations_nm={"defocus": 5, "Cs": 1e3, "C50": 2e6})
    assert set(state.aberrations_nm) == set(TUNABLE_ABERRATIONS) | {"C50"}
    assert state.aberrations_nm["C10"] == 5.0 and state.aberrations_nm["C30"] == 1e3
    assert state.aberrations_nm["C12a"] == 0.0
    with pytest.raises(TypeError):
        state.aberrations_nm["C10"] = 1.0  # type: ignore[index]
    assert make_state().aberrations_nm == dict.fromkeys(TUNABLE_ABERRATIONS, 0.0)


def test_state_rejects_duplicate_and_unknown_aberrations() -> None:
    with pytest.raises(ValueError, match="twice"):
        make_state(aberrations_nm={"C10": 1.0, "defocus": 2.0})
    with pytest.raises(UnknownAberrationError):
        make_state(aberrations_nm={"C99": 1.0})


def test_state_equality_hash_and_replace() -> None:
    state = make_state(aberrations_nm={"C10": 2.0})
    same = make_state(aberrations_nm={"defocus": 2})
    assert state == same and hash(state) == hash(same)
    assert len({state, same}) == 1
    later = state.replace(elapsed_s=3.5, n_scans=1)
    assert later != state
    assert (later.elapsed_s, later.n_scans, state.elapsed_s, state.n_scans) == (3.5, 1, 0.0, 0)
    assert later.aberrations_nm == state.aberrations_nm
    with pytest.raises(ValueError):
        state.replace(n_scans=-1)
    with pytest.raises(TypeError):
        make_state(fov_nm="100")


def test_state_and_results_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_state().elapsed_s = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_frame().fov_nm = 1.0  # type: ignore[misc]


# --- protocol ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "result_type"),
    [
        (Scan(64, 1.0), Frame),
        (Spectrum(0.5, 0.5, 1.0), EELSSpectrum),
        (Zoom(10.0), InstrumentState),
        (Move(1.0, 1.0), InstrumentState),
        (Tune("C10", 1.0), InstrumentState),
        (Ronchigram(1.0), RonchigramImage),
        (Shift(1.0, -1.0), InstrumentState),
    ],
)
def test_expected_result_type(command: Command, result_type: type) -> None:
    assert expected_result_type(command) is result_type
    assert expected_result_type(type(command)) is result_type


def test_expected_result_type_rejects_other_objects() -> None:
    with pytest.raises(CommandTypeError):
        expected_result_type(int)  # type: ignore[arg-type]


class _RecordingInstrument:
    """The smallest instrument that keeps the protocol's contract; for the tests only."""

    def __init__(self) -> None:
        self._state = make_state()
        self._limits = InstrumentLimits()

    @property
    def limits(self) -> InstrumentLimits:
        return self._limits

    def state(self) -> InstrumentState:
        return self._state

    def execute(self, command: Command) -> Result:
        validate(command, self._state, self._limits)
        if isinstance(command, Zoom):
            self._state = self._state.replace(
                fov_nm=command.fov_nm, elapsed_s=self._state.elapsed_s + 0.1
            )
        return self._state

    def close(self) -> None:
        pass


def test_instrument_protocol_is_runtime_checkable() -> None:
    instrument = _RecordingInstrument()
    assert isinstance(instrument, Instrument)
    assert not isinstance(object(), Instrument)
    before = instrument.state()
    with pytest.raises(CommandLimitError):
        instrument.execute(Zoom(0.5))
    assert instrument.state() == before
    result = instrument.execute(Zoom(50.0))
    assert isinstance(result, expected_result_type(Zoom))
    assert instrument.state().fov_nm == 50.0


def test_package_does_not_import_the_simulator() -> None:
    code = (
        "import sys, scopegym.instrument; "
        "loaded = [m for m in sys.modules if m.startswith('scopegym.sim')]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
