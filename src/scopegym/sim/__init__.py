"""The digital twin STEM: specimens, optics, imaging, noise, stage, damage, EELS and the clock.

``sim`` knows nothing of rewards or reinforcement learning; it implements the
:class:`~scopegym.instrument.Instrument` protocol through :class:`TwinMicroscope`.
"""

from scopegym.sim.specimen import FAMILIES, Defect, Specimen, SpecimenFamily
from scopegym.sim.twin import GroundTruth, TwinConfig, TwinMicroscope

__all__ = [
    "FAMILIES",
    "Defect",
    "GroundTruth",
    "Specimen",
    "SpecimenFamily",
    "TwinConfig",
    "TwinMicroscope",
]
