"""Layering: cli -> agents -> envs -> rewards -> instrument, with sim and adapters underneath.

Environments, rewards and the instrument language never import the twin or an adapter; they are
made by name. The twin and the adapters know nothing of environments, rewards or agents.
"""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "package", ["scopegym", "scopegym.envs", "scopegym.rewards", "scopegym.instrument"]
)
def test_package_imports_no_simulator(package):
    code = (
        f"import sys, {package}\n"
        "loaded = sorted(m for m in sys.modules\n"
        "                if m.startswith(('scopegym.sim', 'scopegym.adapters')))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("package", ["scopegym.sim", "scopegym.adapters"])
def test_sim_and_adapters_know_nothing_of_rewards_envs_or_agents(package):
    import ast
    import importlib
    from pathlib import Path

    forbidden = ("scopegym.envs", "scopegym.rewards", "scopegym.agents")
    for path in Path(importlib.import_module(package).__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
