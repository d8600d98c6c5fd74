"""Named sample sets: training, validation and held-out twin samples, disjoint in seeds.

The held-out set also contains specimen families never seen in training (MoS₂, N-doped
graphene), so an evaluation there measures transfer to a new material and a new defect mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from scopegym.instrument import SampleSpec


@dataclass(frozen=True)
class SampleSet:
    """A named set of (family, seed) samples.

    Attributes:
        name: Registry name.
        families: Specimen families in the set.
        seeds: Half-open range [first, last) of specimen seeds.
    """

    name: str
    families: tuple[str, ...]
    seeds: tuple[int, int]

    def __len__(self) -> int:
        return len(self.families) * (self.seeds[1] - self.seeds[0])

    def __iter__(self) -> Iterator[SampleSpec]:
        for seed in range(*self.seeds):
            for family in self.families:
                yield SampleSpec(family, seed)

    def draw(self, rng: np.random.Generator) -> SampleSpec:
        """One sample, uniformly at random.

        Args:
            rng: The environment's generator.
        """
        family = self.families[int(rng.integers(len(self.families)))]
        return SampleSpec(family, int(rng.integers(*self.seeds)))

    def seed_set(self) -> set[int]:
        """All seeds in the set."""
        return set(range(*self.seeds))


SAMPLE_SETS: dict[str, SampleSet] = {
    "train": SampleSet("train", ("graphene", "hbn"), (0, 1_000_000)),
    "validation": SampleSet("validation", ("graphene", "hbn"), (2_000_000, 2_000_020)),
    "heldout": SampleSet(
        "heldout", ("graphene", "hbn", "mos2", "graphene_n_doped"), (3_000_000, 3_000_025)
    ),
}


def sample_set(name: str | SampleSet) -> SampleSet:
    """Look a sample set up by name.

    Raises:
        KeyError: Unknown name; the message lists the known ones.
    """
    if isinstance(name, SampleSet):
        return name
    if name not in SAMPLE_SETS:
        raise KeyError(f"unknown sample set {name!r}; known: {sorted(SAMPLE_SETS)}")
    return SAMPLE_SETS[name]
