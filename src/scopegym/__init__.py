"""scopegym: reinforcement-learning environments for autonomous STEM on a digital twin.

Importing scopegym registers the Gymnasium ids (``scopegym/DefectSearch-v4`` and others).
"""

__version__ = "0.1.0"

from scopegym import envs as _envs  # noqa: E402,F401  (registers the Gymnasium ids)
