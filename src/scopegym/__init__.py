"""scopegym: reinforcement-learning environments for autonomous STEM on a digital twin."""

__version__ = "0.1.0"
