"""Layering: cli -> agents -> envs -> rewards -> instrument, with sim underneath.

Environments, rewards and the instrument language never import the twin; it is made by name.
"""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["scopegym", "scopegym.envs", "scopegym.rewards",
                                     "scopegym.instrument"])
def test_package_imports_no_simulator(package):
    code = (
        f"import sys, {package}\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('scopegym.sim'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sim_knows_nothing_of_rewards_envs_or_agents():
    import ast
    from pathlib import Path

    import scopegym.sim

    forbidden = ("scopegym.envs", "scopegym.rewards", "scopegym.agents")
    for path in Path(scopegym.sim.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
