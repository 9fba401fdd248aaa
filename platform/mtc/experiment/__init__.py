"""``mtc experiment``: grids of trainings (task settings x training fractions x compute bases x axes x seeds)."""
