"""``scopegym-run``: run a trained agent (or a baseline) step by step on an instrument.

Each command is printed as it is sent and each result as it comes back. This is the same code
path that points agents at real instruments: only the ``instrument`` config changes.

The instrument named by ``instrument`` (``make_instrument(name, **kwargs)``) is wrapped by the
safety layer (:class:`~scopegym.instrument.safety.SafeInstrument`, limits from the ``safety``
group, plus ``dry_run``, ``approve`` and ``stop_file``) and that by the HDF5 experiment record
(:class:`~scopegym.adapters.records.RecordingInstrument`, ``record``), and handed to the
environment. Without ground truth (hardware, a dry run, a replay) a reward that needs it falls
back to the observation-only weights (``configs/reward/observation_only.yaml``).

Exit codes: 0 the run ended normally; 1 the configuration cannot run (including an instrument
that cannot be reached or opened); 3 emergency stop (stop file, Ctrl-C or the operator's "stop"):
beam blanked where the instrument can, record closed; 4 the instrument failed during the run (a
lost connection, a replay that diverged or ran past its record; record closed, completed steps
kept); 130 a second Ctrl-C aborted without waiting for the call in flight (the beam is blanked
unless a third Ctrl-C skips that, the abort is recorded, the completed steps kept).
Errors are one line on standard error, never a traceback.

Usage:
    scopegym-run env=defect_search checkpoint=outputs/<run>/final.zip instrument=twin
    scopegym-run env=autotune policy=autofocus max_steps=30
    scopegym-run dry_run=true approve=command stop_file=/tmp/STOP safety=default
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

import scopegym  # noqa: F401  (registers the environment ids)
from scopegym.adapters.records import RecordingInstrument
from scopegym.agents.baselines import BASELINES, make_baseline
from scopegym.agents.cli_checks import (
    checkpoint_problem,
    instrument_problem,
    integer_value,
    quiet_absent_user_config_dir,
)
from scopegym.agents.eval_cli import (
    EvalConfigError,
    check_checkpoint_matches,
    env_kwargs,
    load_checkpoint,
    model_policy,
)
from scopegym.agents.evaluation import Policy
from scopegym.instrument import (
    CommandLimitError,
    Instrument,
    InstrumentError,
    available_instruments,
    make_instrument,
)
from scopegym.instrument.safety import (
    Approval,
    EmergencyStopError,
    SafeInstrument,
    SafetyLimits,
    stop_on_sigint,
)

log = logging.getLogger(__name__)
quiet_absent_user_config_dir()

#: Exit code of a configuration that cannot run.
EXIT_CONFIG_ERROR = 1
#: Exit code of an emergency stop (stop file, Ctrl-C, the operator's "stop").
EXIT_EMERGENCY_STOP = 3
#: Exit code of a second Ctrl-C (abort without waiting for the next command).
EXIT_ABORTED = 130
#: Exit code of an instrument that failed during the run (lost connection, a replay that
#: diverged or ran past its record).
EXIT_INSTRUMENT_FAILURE = 4

_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class RunConfigError(ValueError):
    """A configuration that cannot be run, reported in one line."""


class RunFailedError(RuntimeError):
    """The instrument failed during the run (reported in one line; the record is closed)."""


@dataclass
class RunOutcome:
    """How a run ended.

    Attributes:
        total_return: Sum of the rewards [reward units].
        steps: Environment steps taken.
        exit_code: 0, :data:`EXIT_EMERGENCY_STOP` or :data:`EXIT_ABORTED`.
        stopped: The emergency-stop message, or None.
        record: Path of the experiment record, or None.
    """

    total_return: float
    steps: int
    exit_code: int = 0
    stopped: str | None = None
    record: Path | None = None


def _policy(cfg: DictConfig, env: gym.Env[Any, Any]) -> tuple[Policy, str]:
    if cfg.checkpoint:
        checkpoint = Path(str(cfg.checkpoint)).expanduser()
        try:
            model, maskable, box = load_checkpoint(checkpoint, device=str(cfg.device))
        except EvalConfigError as error:
            raise RunConfigError(str(error)) from None
        name = f"{type(model).__name__}:{checkpoint.stem}"
        policy = model_policy(model, name, maskable, box, env.unwrapped)
        # A checkpoint without its run config beside it escapes check_checkpoint_matches; its
        # saved spaces still tell which frame size and task it was trained on.
        action_space = (policy.box_actions or policy.joint_actions or env).action_space
        for what, trained, here in (
            ("observations", model.observation_space, env.observation_space),
            ("actions", model.action_space, action_space),
        ):
            if trained != here:
                raise RunConfigError(
                    f"checkpoint={str(checkpoint)!r} does not fit {cfg.env.id} with "
                    f"env.kwargs.frame_px={env_kwargs(cfg).get('frame_px')}: it was trained on "
                    f"{what} {_describe_space(trained)}, the environment has "
                    f"{_describe_space(here)}; pick the matching env=... and env.kwargs.frame_px"
                )
        return policy, name
    name = str(cfg.policy)
    return make_baseline(name, env), name


def _describe_space(space: Any) -> str:
    """A space in a few words: ``frame (1, 96, 96), state (12,)`` or ``MultiDiscrete([...])``."""
    entries = getattr(space, "spaces", None)
    if isinstance(entries, dict):
        return ", ".join(f"{key} {getattr(sub, 'shape', sub)}" for key, sub in entries.items())
    return str(space)


def _check_config(cfg: DictConfig) -> None:
    """Refuse what cannot run before anything touches the instrument or the disk."""
    for key, minimum in (("seed", None), ("max_steps", 1), ("approve_batch_size", 1)):
        problem = integer_value(cfg, key, minimum=minimum)
        if problem is not None:
            raise RunConfigError(problem)
    if str(cfg.instrument.name) not in available_instruments():
        raise RunConfigError(
            f"instrument.name={str(cfg.instrument.name)!r} is not registered "
            f"(known: {', '.join(available_instruments())}); register yours with "
            "scopegym.instrument.register_instrument in a launcher that then calls "
            "scopegym.agents.run_cli.main (README: Pointing scopegym-run at your instrument)"
        )
    problem = instrument_problem(cfg)
    if problem is not None:
        raise RunConfigError(problem)
    if cfg.checkpoint:
        checkpoint = Path(str(cfg.checkpoint)).expanduser()
        if not checkpoint.exists():
            raise RunConfigError(f"checkpoint {checkpoint} does not exist")
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise RunConfigError(problem)
        try:
            check_checkpoint_matches(checkpoint, cfg)
        except EvalConfigError as error:
            raise RunConfigError(str(error)) from None
    elif str(cfg.policy) not in BASELINES:
        raise RunConfigError(f"unknown policy {cfg.policy!r}; baselines: {sorted(BASELINES)}")
    if cfg.approve not in (None, "command", "batch"):
        raise RunConfigError(f"approve must be null, command or batch, got {cfg.approve!r}")


def _name_the_safety_limits(cfg: DictConfig) -> None:
    """Name ``cfg.safety`` after the option chosen (``safety=mylab`` -> "mylab").

    The name follows the file, so a facility's copy of ``safety/default.yaml`` never reports
    itself as "default"; outside a Hydra run a ``name`` key in the group is kept ("custom"
    without one). The output and the record's config carry the name.
    """
    from hydra.core.hydra_config import HydraConfig

    name = cfg.safety.get("name") or "custom"
    if HydraConfig.initialized():
        name = HydraConfig.get().runtime.choices.get("safety") or name
    with open_dict(cfg):
        cfg.safety.name = str(name)


def _run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def _config_yaml(cfg: DictConfig) -> str:
    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable interpolation: keep it as written
        return OmegaConf.to_yaml(cfg)


def _reward_needs_truth(env_id: str, kwargs: dict[str, Any]) -> bool:
    """Whether the configured environment's reward needs the twin's ground truth."""
    from gymnasium.envs.registration import load_env_creator

    spec = gym.spec(env_id)
    entry = spec.entry_point
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    task_class = getattr(creator, "task_class", None)
    if task_class is None:
        return False  # not a scopegym TaskEnv: let the environment decide
    # Only the task's own arguments: the env's (samples, odometry, ...) and gymnasium.make's
    # (max_episode_steps of a legacy config) are not the task's.
    accepted = inspect.signature(task_class).parameters
    task_kwargs = {k: v for k, v in {**spec.kwargs, **kwargs}.items() if k in accepted}
    return bool(task_class(**task_kwargs).make_reward().requires_ground_truth)


def build_instrument(
    cfg: DictConfig,
    *,
    run_dir: Path,
    input_fn: Callable[[str], str] | None = None,
    out: Any = sys.stdout,
) -> tuple[SafeInstrument, RecordingInstrument | None]:
    """Make the configured instrument, wrapped by the safety layer and the record.

    Args:
        cfg: The composed ``run`` config.
        run_dir: Directory a relative ``record`` path lies in.
        input_fn: Reads the operator's answers (approval); :func:`input` by default.
        out: Stream for approval messages.

    Returns:
        ``(safety layer, record)``; the record wraps the safety layer and is None when
        ``record`` is null.

    Raises:
        RunConfigError: A safety key, the stop file or the record path cannot be used.
    """
    name = str(cfg.instrument.name)
    container = OmegaConf.to_container(cfg.instrument.kwargs, resolve=True) or {}
    assert isinstance(container, dict)
    kwargs = {str(key): value for key, value in container.items()}
    safety_cfg = OmegaConf.to_container(cfg.safety, resolve=True)
    try:
        limits = SafetyLimits.from_config(safety_cfg)  # type: ignore[arg-type]
        approval = None
        if cfg.approve is not None:
            approval = Approval(str(cfg.approve), int(cfg.approve_batch_size), input_fn, out)
    except ValueError as error:
        raise RunConfigError(str(error)) from None
    try:
        inner = make_instrument(name, **kwargs)
    except (InstrumentError, OSError) as error:
        # No server at the URI, a record h5py cannot read, hardware that does not answer.
        raise RunConfigError(f"instrument '{name}' cannot be used: {error}") from None
    stop_file = None if cfg.stop_file is None else Path(str(cfg.stop_file)).expanduser().absolute()
    try:
        safe = SafeInstrument(
            inner, limits, dry_run=bool(cfg.dry_run), approval=approval, stop_file=stop_file
        )
    except ValueError as error:
        inner.close()
        raise RunConfigError(str(error)) from None
    if cfg.record is None:
        return safe, None
    path = Path(str(cfg.record)).expanduser()
    if not path.is_absolute():
        path = run_dir / path
    try:
        recording = RecordingInstrument(
            safe,
            path,
            instrument_name=name,
            instrument_kwargs=kwargs,
            policy=None if cfg.checkpoint else str(cfg.policy),
            checkpoint=None if not cfg.checkpoint else Path(str(cfg.checkpoint)).expanduser(),
            config_yaml=_config_yaml(cfg),
            seed=int(cfg.seed),
            extra={"env": str(cfg.env.id), "samples": str(cfg.samples.name)},
        )
    except (FileExistsError, OSError) as error:
        safe.close()
        raise RunConfigError(f"cannot create the record {path}: {error}") from None
    return safe, recording


def _make_env(cfg: DictConfig, instrument: Instrument, out: Any) -> gym.Env[Any, Any]:
    kwargs = env_kwargs(cfg)
    kwargs.pop("instrument_name", None)
    kwargs.pop("instrument_kwargs", None)
    if getattr(instrument, "truth", None) is None and _reward_needs_truth(str(cfg.env.id), kwargs):
        why = "a dry run has" if cfg.dry_run else f"instrument '{cfg.instrument.name}' has"
        fallback = OmegaConf.load(_CONFIG_DIR / "reward" / "observation_only.yaml")
        kwargs["reward_weights"] = OmegaConf.to_container(fallback.weights)
        kwargs.pop("reward_params", None)
        if fallback.params is not None:
            kwargs["reward_params"] = OmegaConf.to_container(fallback.params)
        print(
            f"{why} no ground truth: the reward falls back to the observation-only weights "
            "(configs/reward/observation_only.yaml)",
            file=out,
        )
    try:
        return gym.make(
            str(cfg.env.id), samples=str(cfg.samples.name), instrument=instrument, **kwargs
        )
    except ValueError as error:  # e.g. a frame_px the instrument cannot scan
        raise RunConfigError(f"{cfg.env.id} cannot be made: {error}") from None


def run(
    cfg: DictConfig,
    out: Any = sys.stdout,
    *,
    input_fn: Callable[[str], str] | None = None,
    run_dir: Path | None = None,
) -> RunOutcome:
    """Run one episode through the safety layer and the record, printing every step.

    Args:
        cfg: The composed ``run`` config.
        out: Stream to print to.
        input_fn: Reads the operator's approval answers; :func:`input` by default.
        run_dir: Directory for a relative ``record`` path; the Hydra run directory by default.

    Returns:
        How the run ended; an emergency stop is an outcome, not an exception.

    Raises:
        RunConfigError: The configuration cannot run.
        RunFailedError: The instrument failed during the run; the record is closed first.
    """
    _check_config(cfg)
    _name_the_safety_limits(cfg)
    safe, recording = build_instrument(
        cfg, run_dir=run_dir or _run_dir(), input_fn=input_fn, out=out
    )
    instrument: Instrument = recording if recording is not None else safe
    record_path = recording.path if recording is not None else None
    env: gym.Env[Any, Any] | None = None
    total, step = 0.0, 0
    status, exit_code, stopped = "crashed", 0, None
    failure: str | None = None
    try:
        env = _make_env(cfg, instrument, out)
        policy, name = _policy(cfg, env)
        print(f"safety '{cfg.safety.name}': {safe.safety_limits.describe()}", file=out)
        if safe.dry_run:
            print(
                "DRY RUN: every command is checked and recorded, none is sent to the instrument; "
                "results are placeholders (blank frames, spectra and Ronchigrams, nominal states)",
                file=out,
            )
        if safe.approval is not None:
            print(f"approval: {cfg.approve} (y = send, n = refuse, s = emergency stop)", file=out)
        if safe.stop_file is not None:
            print(f"emergency stop: create {safe.stop_file} or press Ctrl-C", file=out)
        print(f"record: {record_path}", file=out, flush=True)
        with stop_on_sigint(safe):
            opening = safe.approval.opening() if safe.approval is not None else nullcontext()
            try:
                with opening:
                    obs, info = env.reset(seed=int(cfg.seed))
            except CommandLimitError as error:
                raise RunConfigError(
                    f"the task's opening command was refused ({error}); nothing else was sent"
                ) from None
            if hasattr(policy, "reset"):
                policy.reset()
            sample = (
                f"sample {info['sample']}"
                if safe.can_load_samples
                else "the sample in the holder (this instrument cannot load samples)"
            )
            print(
                f"{name} on {cfg.env.id} via instrument '{cfg.instrument.name}', {sample}",
                file=out,
                flush=True,
            )
            limit = int(cfg.max_steps) if cfg.max_steps is not None else None
            while limit is None or step < limit:
                safe.check_stop()
                masks = env.unwrapped.action_masks()  # type: ignore[attr-defined]
                action, _ = policy.predict(obs, action_masks=masks, deterministic=True)
                obs, reward, terminated, truncated, info = env.step(action)
                step += 1
                total += float(reward)
                macro = info.get("macro")
                if macro is not None:
                    # A macro verb: one step, several commands, each sent (and recorded) alone.
                    sent = list(info.get("commands", []))
                    if info["refused"] is not None:
                        sent.append(info["command"])
                    label = " ".join(f"{k}={v}" for k, v in macro.items() if k != "verb")
                    for index, command in enumerate(sent):
                        lead = f"[{step:4d}]" if index == 0 else "      "
                        print(
                            f"{lead} -> {command}  (macro {macro['verb']} {label}: "
                            f"{index + 1} of {len(sent)})",
                            file=out,
                        )
                else:
                    print(f"[{step:4d}] -> {info['command']}", file=out)
                outcome = info.get("result") or {"refused": info["refused"]}
                dry = "  (dry run: not sent)" if safe.dry_run and info.get("result") else ""
                print(
                    f"       <- {outcome}{dry}  reward {reward:+.4f}  t {info['elapsed_s']:.2f} s  "
                    f"dose {info['dose_e_per_A2']:.3g} e/A^2",
                    file=out,
                    flush=True,
                )
                if terminated or truncated:
                    print(
                        f"episode {'terminated' if terminated else 'truncated'} after {step} steps",
                        file=out,
                    )
                    break
            safe.check_stop()  # a stop that came in during the last step
        status = "completed"
        print(f"return {total:+.4f}", file=out, flush=True)
    except EmergencyStopError as error:
        if recording is not None:
            recording.record_stop(error)
        status, exit_code, stopped = "emergency stop", EXIT_EMERGENCY_STOP, str(error)
    except KeyboardInterrupt:
        # The call in flight was left; blank the beam now (it waits for the instrument, which
        # a further Ctrl-C skips) and write the stop into the record, then leave.
        print(
            "scopegym-run: second Ctrl-C: aborting; blanking the beam first (Ctrl-C to skip)",
            file=out,
            flush=True,
        )
        blanking = safe.abort()
        status, exit_code = f"aborted (second Ctrl-C): {blanking}", EXIT_ABORTED
        if recording is not None:
            recording.record_stop(EmergencyStopError("a second Ctrl-C aborted the run", blanking))
    except RunConfigError as error:
        status = f"not run: {error}"
        raise
    except InstrumentError as error:
        # A lost connection, a replay that diverged or ran past its record, a failed command:
        # the instrument's own message says what happened, a traceback adds nothing.
        status = f"failed ({type(error).__name__}: {error})"
        failure = f"{error} (after {step} steps)"
    except BaseException as error:
        status = f"crashed ({type(error).__name__}: {error})"
        raise
    finally:
        if recording is not None:
            recording.finish(status)
        if env is not None:
            env.close()
        else:
            instrument.close()
    if failure is not None:
        kept = (
            f"; record closed: {record_path} ({recording.n_steps} steps)"
            if recording is not None
            else ""
        )
        raise RunFailedError(failure + kept)
    if exit_code:
        steps_kept = f" ({recording.n_steps} steps)" if recording is not None else ""
        print(
            f"scopegym-run: {stopped or status}. Record closed: {record_path}{steps_kept}. "
            f"Exit code {exit_code}.",
            file=out,
            flush=True,
        )
    return RunOutcome(total, step, exit_code, stopped, record_path)


@hydra.main(config_path="../configs", config_name="run", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point."""
    try:
        outcome = run(cfg)
    except RunConfigError as error:
        print(f"scopegym-run: error: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    except RunFailedError as error:
        print(f"scopegym-run: error: {error}", file=sys.stderr)
        sys.exit(EXIT_INSTRUMENT_FAILURE)
    if outcome.exit_code:
        sys.exit(outcome.exit_code)


if __name__ == "__main__":
    main()
