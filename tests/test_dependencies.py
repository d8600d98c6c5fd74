"""pyproject.toml declares every third-party package the installed code imports.

A package that arrives only as some other package's dependency (msgpack through abTEM, Pillow
through matplotlib) disappears when that package changes, and the failure shows up far from
the cause ("cannot connect"). Core code's imports must be core dependencies.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "scopegym"
#: scopegym's Hydra plugins, installed with the package (the launcher hydra/launcher=ray).
PLUGINS = ROOT / "src" / "hydra_plugins"

#: Modules the package loads by name instead of an import statement, and the extra that
#: provides them (None: core). Each entry's premise is checked below.
LOADED_BY_NAME = {
    "msgpack": None,
    "nion": "nion",
    "gpytorch": "gp",
    "botorch": "gp",
    "ray": "ray",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return _normalise(match.group(0))


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {
        extra: {_requirement_name(r) for r in requirements}
        for extra, requirements in project["optional-dependencies"].items()
    }
    return core, extras


def _imported_modules() -> dict[str, list[str]]:
    """Top-level third-party modules imported anywhere in src/, with where."""
    found: dict[str, list[str]] = {}
    for path in sorted([*SOURCE.rglob("*.py"), *PLUGINS.rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in ("scopegym", "hydra_plugins") or top in sys.stdlib_module_names:
                    continue
                found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


@functools.cache
def _module_distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def _distributions(module: str) -> set[str]:
    return {_normalise(d) for d in _module_distributions().get(module, [])}


def test_every_import_in_src_is_a_declared_core_dependency():
    core, _ = _declared()
    imported = _imported_modules()
    # The scan finds imports at all, in the package and in its Hydra plugin.
    assert {"numpy", "PIL", "h5py", "Pyro5", "hydra"} <= set(imported)
    assert any("hydra_plugins" in where for where in imported["hydra"])
    undeclared = {}
    for module, where in sorted(imported.items()):
        distributions = _distributions(module)
        assert distributions, f"{module} (imported by {where[0]}) is not installed"
        if not distributions & core:
            undeclared[module] = (sorted(distributions), where[0])
    assert not undeclared, f"imported by src but not core dependencies: {undeclared}"


def test_modules_loaded_by_name_are_declared_where_they_are_needed():
    from scopegym.adapters import remote

    # The remote link serializes with Pyro5's msgpack serializer, which imports msgpack itself.
    assert remote.SERIALIZER == "msgpack"
    # The Nion adapter imports nion.* through importlib, only when a Nion instrument is made.
    assert '_nion("nion.' in (SOURCE / "adapters" / "nion.py").read_text()
    # The Gaussian-process baselines import the gp extra by name, only when they are made.
    agents = SOURCE / "agents"
    assert 'import_module("gpytorch")' in (agents / "dkl.py").read_text()
    assert 'import_module("botorch")' in (agents / "tuners.py").read_text()
    # RLlib is imported by name in the one module that trains and loads with it.
    assert 'import_module("ray.rllib.' in (agents / "rllib.py").read_text()
    # So is Ray in the launcher that runs multirun jobs as Ray tasks, only when it launches.
    launcher = (PLUGINS / "scopegym_ray_launcher" / "ray_launcher.py").read_text()
    assert 'import_module("ray")' in launcher and "\nimport ray" not in launcher
    core, extras = _declared()
    for module, extra in LOADED_BY_NAME.items():
        wanted = core if extra is None else extras[extra]
        if module == "ray" and not _distributions(module):
            continue  # the optional extra is not installed here; its declaration still is
        if module == "nion":
            # The nion namespace is shared by several nionswift distributions.
            assert {"nionswift-usim", "nionswift-instrumentation"} <= wanted
            continue
        assert _distributions(module) & wanted, f"{module} is not declared in {extra or 'core'}"


def test_unused_packages_are_not_core_dependencies():
    core, extras = _declared()
    imported = {_normalise(d) for m in _imported_modules() for d in _distributions(m)}
    # Core packages src never imports must be there for a stated runtime reason.
    runtime_only = {
        "torch",  # SB3's policies; scopegym imports it too, but SB3 needs it regardless
        "tensorboard",  # SB3's TensorBoard logger
        "rich",  # SB3's progress bar
        "msgpack",  # Pyro5's msgpack serializer
    }
    unexplained = core - imported - runtime_only
    assert not unexplained, f"core dependencies nothing imports: {sorted(unexplained)}"
    assert "scikit-image" not in core | set().union(*extras.values())
    assert "ase" in extras["reference"] and "ase" not in core
