"""scopegym.envs."""
