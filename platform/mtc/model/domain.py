"""What an ensemble saw in training, and why a new crystal lies outside it (pure numpy, no torch, no Ray).

Three reasons, each cheap to check at prediction time: an element no training crystal contains, more atoms than
any training cell, and a members' spread above the largest on the validation split (beyond the range the
calibration was fitted on, where its intervals are extrapolated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Domain:
    """elements: atomic numbers present in training; max_atoms: the largest training cell; spread_max: per
    calibrated task, the largest validation spread."""

    elements: list[int]
    max_atoms: int
    spread_max: dict[str, float]

    def to_dict(self) -> dict:
        return {"elements": self.elements, "max_atoms": self.max_atoms, "spread_max": self.spread_max}

    @classmethod
    def from_dict(cls, data: dict) -> Domain:
        return cls(list(data["elements"]), int(data["max_atoms"]), dict(data["spread_max"]))

    def flags(
        self, atomic_numbers: np.ndarray, crystal_index: np.ndarray, n_crystals: int, spread: dict[str, np.ndarray]
    ) -> list[str | None]:
        """Why each crystal is out of domain (reasons joined by ``; ``), None where it is in.

        Args:
            atomic_numbers: (N,) of every atom of the batch; crystal_index: (N,) its crystal; n_crystals: B.
            spread: task -> (B,) the members' spread (tasks without ``spread_max`` are not checked).
        """
        reasons: list[list[str]] = [[] for _ in range(n_crystals)]
        unseen = ~np.isin(atomic_numbers, self.elements)
        for crystal in np.unique(crystal_index[unseen]):
            zs = np.unique(atomic_numbers[unseen & (crystal_index == crystal)])
            reasons[crystal].append(f"element Z={','.join(map(str, zs))} not in training")
        counts = np.bincount(crystal_index, minlength=n_crystals)
        for crystal in np.flatnonzero(counts > self.max_atoms):
            reasons[crystal].append(f"{counts[crystal]} atoms > {self.max_atoms} (largest training cell)")
        for task, values in spread.items():
            if task in self.spread_max:
                for crystal in np.flatnonzero(values > self.spread_max[task]):
                    reasons[crystal].append(f"{task} spread above validation's")
        return ["; ".join(r) if r else None for r in reasons]


def training_domain(atomic_numbers: list[np.ndarray], val_spread: dict[str, np.ndarray]) -> Domain:
    """The domain of a training split (one array of atomic numbers per crystal) and a validation spread."""
    elements = np.unique(np.concatenate(atomic_numbers)) if atomic_numbers else np.zeros(0, int)
    return Domain(
        [int(z) for z in elements],
        max((len(a) for a in atomic_numbers), default=0),
        {task: float(values.max()) for task, values in val_spread.items() if values.size},
    )
