"""scopegym.sim."""
