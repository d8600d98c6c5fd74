"""A Hydra launcher that runs each job of a multirun as a Ray task, locally or on a cluster.

Hydra's own Ray launcher (``hydra-ray-launcher`` 1.2.2, its last release) requires
``cloudpickle<3``, while every dask release since 2024 requires ``cloudpickle>=3`` (dask comes
with abTEM and sidpy in the ``reference`` and ``interop`` extras), so the two cannot be installed
together. This launcher does the same job with Ray itself: Ray places the tasks, on one machine
or on many; the launcher only turns Hydra jobs into tasks and collects their results. Where
``hydra-ray-launcher`` is installed, ``hydra/launcher=ray`` stays its launcher and this one is
not registered.

Config (``hydra.launcher.*``):

* ``address``: None starts a local Ray on 127.0.0.1 for the sweep and shuts it down afterwards;
  ``auto`` (or ``host:port``) joins a running cluster (``ray start --head`` on one node,
  ``ray start --address=...`` on the others, or a Ray cluster started under Slurm).
* ``num_cpus``: CPUs a local Ray offers (None: the machine's).
* ``remote``: options of ``ray.remote`` for every job, e.g. ``{num_cpus: 2}`` for jobs that
  train with two environment processes (``n_envs=2 vec_env=subproc``). A ``trainer=rllib`` job
  asks the same cluster for its env runners, so give it ``remote.num_cpus=0`` on a small
  machine, or its own task holds a CPU its runners wait for.

Jobs run in the directory the sweep started in when the node has it (a shared filesystem, as on
a Slurm cluster), so relative output directories mean what they mean for the basic launcher.
Each job's ``hydra.job.id`` is the Ray task's id, recorded in its ``.hydra/hydra.yaml``.
"""

# No ``from __future__ import annotations``: Hydra executes plugin modules outside sys.modules
# while it scans them, where dataclasses cannot resolve string annotations.
import importlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class RayTaskLauncherConf:
    """``hydra/launcher=ray``: see the module docstring."""

    _target_: str = "hydra_plugins.scopegym_ray_launcher.ray_launcher.RayTaskLauncher"
    address: str | None = None
    num_cpus: int | None = None
    remote: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1})


if find_spec("hydra_plugins.hydra_ray_launcher") is None:
    ConfigStore.instance().store(
        group="hydra/launcher", name="ray", node=RayTaskLauncherConf, provider="scopegym"
    )


class JobExitedError(RuntimeError):
    """A job called ``sys.exit`` (a CLI's one-line refusal); its message is the exit's."""


def _run_job_as_task(
    hydra_context: HydraContext,
    task_function: TaskFunction,
    sweep_config: DictConfig,
    singleton_state: dict[Any, Any],
    start_directory: str,
) -> JobReturn:
    """Body of every Ray task: one Hydra job, run as the basic launcher runs it."""
    setup_globals()
    # A Ray worker is a fresh process: Hydra's config store and plugin registry come from the
    # process that composed the sweep.
    Singleton.set_state(singleton_state)
    if os.path.isdir(start_directory):
        os.chdir(start_directory)
    context = importlib.import_module("ray").get_runtime_context()
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = context.get_task_id()
    try:
        return run_job(
            hydra_context=hydra_context,
            task_function=task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    except SystemExit as exit_:
        # run_job catches Exceptions only; a SystemExit would end the Ray worker instead of
        # reaching the user as the CLI's message.
        raise JobExitedError(str(exit_.code)) from None


class RayTaskLauncher(Launcher):
    """Runs a multirun's jobs as Ray tasks (see the module docstring).

    Args:
        address: None: a local Ray for this sweep; ``auto`` or ``host:port``: a running cluster.
        num_cpus: CPUs a local Ray offers (None: the machine's).
        remote: Options of ``ray.remote`` for every job (resources, retries).
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        remote: dict[str, Any] | DictConfig | None = None,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        options: Any = OmegaConf.to_container(remote) if isinstance(remote, DictConfig) else remote
        self.remote: dict[str, Any] = {str(key): value for key, value in (options or {}).items()}
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        """Keep what :meth:`launch` needs (Hydra calls this once per sweep)."""
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Run the jobs as Ray tasks and return their results in job order.

        Raises:
            SystemExit: A job exited with a message (after every job has finished).
        """
        if self.config is None or self.hydra_context is None or self.task_function is None:
            raise RuntimeError("launch() before setup()")
        from scopegym.agents.rllib import init_ray, shutdown_ray

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        started = init_ray(self.address, self.num_cpus)
        ray = importlib.import_module("ray")
        try:
            log.info(
                "Launching %d jobs as Ray tasks (%s, %s CPUs)",
                len(job_overrides),
                "local Ray" if self.address is None else f"cluster at {self.address}",
                ray.cluster_resources().get("CPU", 0),
            )
            # ray.remote() takes either a function or options, not an empty set of options.
            remote = ray.remote(**self.remote) if self.remote else ray.remote
            task = remote(_run_job_as_task)
            pending = []
            for index, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
                sweep_config = self.hydra_context.config_loader.load_sweep_config(
                    self.config, list(overrides)
                )
                with open_dict(sweep_config):
                    sweep_config.hydra.job.num = index
                pending.append(
                    task.remote(
                        self.hydra_context,
                        self.task_function,
                        sweep_config,
                        Singleton.get_state(),
                        os.getcwd(),
                    )
                )
            results: list[JobReturn] = []
            exits: list[str] = []
            for index, reference in enumerate(pending, start=initial_job_idx):
                try:
                    results.append(ray.get(reference))
                except ray.exceptions.RayTaskError as error:
                    if not isinstance(error.cause, JobExitedError):
                        raise
                    exits.append(f"job #{index}: {error.cause}")
        finally:
            if started:
                shutdown_ray()
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        if exits:
            raise SystemExit("\n".join(exits))
        return results


__all__ = ["JobExitedError", "RayTaskLauncher", "RayTaskLauncherConf"]
