"""scopegym.configs."""
