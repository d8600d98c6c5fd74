"""scopegym.rewards."""
