"""Checks that scopegym-train, -eval and -run share, so that a bad value ends in one line.

Each command raises its own error class (``TrainConfigError``, ``EvalConfigError``,
``RunConfigError``) with the message these functions build; the command prints it as
``scopegym-<command>: error: <message>`` and exits with code 1 instead of a traceback through
Hydra, h5py or SB3.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Instrument keyword arguments that name a file the instrument opens (the replay's record).
_FILE_KWARGS = ("path",)
#: Directory of a user's own config options (``<group>/<name>.yaml``), relative to the directory
#: the command starts in, unless the environment variable :data:`USER_CONFIG_ENV` names one.
#: The primary configs (train, eval, run.yaml) put it on Hydra's search path.
USER_CONFIG_DIR = "scopegym_configs"
USER_CONFIG_ENV = "SCOPEGYM_CONFIG_DIR"


def quiet_absent_user_config_dir() -> None:
    """Hide Hydra's warning that the user config directory does not exist.

    Most users never make one; Hydra warns about every search-path entry that is not a
    directory. Only entries of the primary config ("in main") are silenced: a missing
    directory given as ``hydra.searchpath=[...]`` on the command line still warns.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"provider=hydra\.searchpath in main, path=.* is not available",
        category=UserWarning,
    )


def integer_value(cfg: DictConfig, key: str, *, minimum: int | None = None) -> str | None:
    """Why ``cfg.<key>`` is not a usable integer, or None when it is (or is null).

    Args:
        cfg: A composed config.
        key: Dotted key, e.g. ``"seed"``.
        minimum: Smallest allowed value, or None.
    """
    value = OmegaConf.select(cfg, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{key} must be an integer, got {value!r}"
    if minimum is not None and value < minimum:
        return f"{key} must be at least {minimum}, got {value}"
    return None


def missing_values(cfg: DictConfig) -> list[str]:
    """Keys the config marks as required (``???``) that the command line left unset."""
    return sorted(OmegaConf.missing_keys(cfg))


def instrument_problem(cfg: DictConfig) -> str | None:
    """Why the configured instrument cannot be made, as far as the config alone tells.

    A required keyword argument left unset (``instrument=replay`` without
    ``instrument.kwargs.path``) and a file argument that names no file are caught here, before
    h5py opens a file literally named ``???``.

    Args:
        cfg: A composed train, eval or run config.
    """
    missing = missing_values(cfg)
    if missing:
        name = OmegaConf.select(cfg, "instrument.name")
        hints = {
            "instrument.kwargs.path": f" (instrument={name} needs the record to play: "
            "instrument.kwargs.path=outputs/<run>/record.h5)"
        }
        return "; ".join(f"{key} must be given{hints.get(key, '')}" for key in missing)
    kwargs: Any = OmegaConf.select(cfg, "instrument.kwargs")
    if kwargs is None:
        return None
    for key in _FILE_KWARGS:
        value = kwargs.get(key)
        if value is not None and not Path(str(value)).expanduser().is_file():
            return f"instrument.kwargs.{key}={str(value)!r}: no such file"
    return None


#: File at the root of every RLlib algorithm checkpoint directory.
RLLIB_CHECKPOINT_FILE = "rllib_checkpoint.json"


def is_rllib_checkpoint(path: Path) -> bool:
    """Whether ``path`` is an RLlib algorithm checkpoint directory (``trainer=rllib``)."""
    return path.is_dir() and (path / RLLIB_CHECKPOINT_FILE).is_file()


def checkpoint_problem(checkpoint: Path, key: str = "checkpoint") -> str | None:
    """Why a path cannot be a checkpoint (an SB3 .zip or an RLlib directory), or None.

    Args:
        checkpoint: The path given on the command line.
        key: Config key it came from, for the message.
    """
    if is_rllib_checkpoint(checkpoint):
        return None
    if checkpoint.is_dir():
        return (
            f"{key}={str(checkpoint)!r} is a directory but not an RLlib checkpoint (no "
            f"{RLLIB_CHECKPOINT_FILE}): give final_rllib/ or checkpoints/rllib_<steps>_steps/"
        )
    if not checkpoint.is_file():
        return f"{key}={str(checkpoint)!r}: no such checkpoint file"
    if not zipfile.is_zipfile(checkpoint):
        return (
            f"{key}={str(checkpoint)!r} is not a checkpoint: SB3 models are .zip archives "
            "(final.zip, checkpoints/model_<steps>_steps.zip or an exported policy); RLlib "
            "checkpoints are directories (final_rllib/)"
        )
    return None
