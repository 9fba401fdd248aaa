"""A corpus of bad inputs mixed with good real crystals, in each input layout mtc reads."""

from __future__ import annotations

import json
from pathlib import Path

from pymatgen.core import Structure
from pymatgen.io.cif import CifWriter

# id -> the rejection reason mtc must give
BAD_JSONL_REASONS = {
    "bad-no-coords": "bad_coordinates",
    "bad-text-coords": "bad_coordinates",
    "bad-singular": "singular_lattice",
    "bad-overlap": "overlapping_atoms",
    "bad-disordered": "disordered",
    "bad-element": "unknown_element",
    "bad-beyond-table": "unknown_element",
    "bad-too-big": "too_many_atoms",
    "bad-label": "bad_label",
}
BAD_CIF_REASONS = {
    "bad-garbage": "unparseable_cif",
    "bad-empty": "empty_cif",
    "bad-partial": "disordered",
    "bad-label": "bad_label",
    "bad-no-file": "missing_file",
}
MAX_ATOMS = 150  # the corpus runs with this size limit; the 200-atom crystal exceeds it


def bad_jsonl_rows(good: list[dict]) -> list[dict]:
    """JSON rows, one per case in BAD_JSONL_REASONS, built by breaking real crystals."""
    base = {k: good[0][k] for k in ("lattice", "species", "frac_coords")}
    grid = [[i / 6, j / 6, k / 6] for i in range(6) for j in range(6) for k in range(6)]  # 216 atoms
    return [
        {"id": "bad-no-coords", "lattice": base["lattice"], "species": base["species"], "band_gap": 1.0},
        {**base, "id": "bad-text-coords", "frac_coords": [["a", 0, 0]] * len(base["species"])},
        {
            "id": "bad-singular",
            "lattice": [[1, 0, 0], [2, 0, 0], [0, 0, 1]],
            "species": ["Na"],
            "frac_coords": [[0, 0, 0]],
        },
        {
            "id": "bad-overlap",
            "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]],
            "species": ["Na", "Cl"],
            "frac_coords": [[0, 0, 0], [0.01, 0, 0]],
        },
        {
            "id": "bad-disordered",
            "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]],
            "species": [{"Fe": 0.5, "Ni": 0.5}],
            "frac_coords": [[0, 0, 0]],
        },
        {
            "id": "bad-element",
            "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]],
            "species": ["Xx"],
            "frac_coords": [[0, 0, 0]],
        },
        {
            "id": "bad-beyond-table",
            "lattice": [[4, 0, 0], [0, 4, 0], [0, 0, 4]],
            "species": ["Md"],
            "frac_coords": [[0, 0, 0]],
        },
        {
            "id": "bad-too-big",
            "lattice": [[18, 0, 0], [0, 18, 0], [0, 0, 18]],
            "species": ["Na"] * len(grid),
            "frac_coords": grid,
        },
        {**base, "id": "bad-label", "band_gap": "n/a"},
    ]


def write_bad_jsonl(path: Path, good: list[dict]) -> Path:
    """Good rows (one with a missing label), every bad case, a line that is not JSON, a row without id."""
    good = [dict(r) for r in good]
    good[0]["band_gap"] = None  # a missing label is a null, not a rejection
    lines = [json.dumps(r) for r in good[:2]]
    lines += [json.dumps(r) for r in bad_jsonl_rows(good)]
    lines += ["{this is not json", json.dumps({k: good[2][k] for k in ("lattice", "species", "frac_coords")})]
    lines += [json.dumps(r) for r in good[2:]]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_cif_folder(folder: Path, good: list[dict], with_bad: bool = True) -> Path:
    """A CGCNN folder: one CIF per crystal and id_prop.csv (header, ids as strings)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["id,formation_energy_per_atom,band_gap"]
    for r in good:
        structure = Structure(r["lattice"], r["species"], r["frac_coords"])
        CifWriter(structure).write_file(folder / f"{r['id']}.cif")
        gap = "" if r is good[0] else r["band_gap"]  # one missing label
        lines.append(f"{r['id']},{r['formation_energy_per_atom']},{gap}")
    if with_bad:
        (folder / "bad-garbage.cif").write_text("this is not a CIF file\n_cell_length_a banana\n")
        (folder / "bad-empty.cif").write_text("")
        partial = Structure([[4, 0, 0], [0, 4, 0], [0, 0, 4]], [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
        CifWriter(partial).write_file(folder / "bad-partial.cif")
        CifWriter(Structure(good[1]["lattice"], good[1]["species"], good[1]["frac_coords"])).write_file(
            folder / "bad-label.cif"
        )
        lines += [
            "bad-garbage,1.0,1.0",
            "bad-empty,1.0,1.0",
            "bad-partial,1.0,1.0",
            "bad-label,abc,1.0",
            "bad-no-file,1.0,1.0",
        ]
    (folder / "id_prop.csv").write_text("\n".join(lines) + "\n")
    return folder
