"""scopegym.agents."""
