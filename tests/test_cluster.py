"""mtc.cluster: where a job runs (``choose_engine``, without Ray), and joining a Ray this process runs already."""

from __future__ import annotations

import pytest

from mtc.cluster import LOCAL_CORES, LOCAL_ROWS, choose_engine, connect
from tests.orphans import orphan_placement_group


@pytest.mark.parametrize("job", list(LOCAL_ROWS))
def test_auto_runs_small_inputs_here_unless_something_asks_for_ray(job: str) -> None:
    below, at, many = LOCAL_ROWS[job] - 1, LOCAL_ROWS[job], LOCAL_CORES + 1
    assert choose_engine("auto", job, below, None, running=False, cores=many) == "local"
    assert choose_engine("auto", job, at, None, running=False, cores=many) == "ray"
    assert choose_engine("auto", job, 10**7, None, running=False, cores=LOCAL_CORES) == "local"  # any size, few cores
    for cores in (1, LOCAL_CORES, many):
        assert choose_engine("auto", job, 1, "ray://head:10001", False, cores) == "ray"  # a cluster is always Ray
        assert choose_engine("auto", job, 1, None, True, cores) == "ray"  # Ray already up in this process: use it
    for kind in ("ray", "local"):  # an explicit choice stands
        assert choose_engine(kind, job, at, "ray://head:10001", running=True, cores=many) == kind
    with pytest.raises(ValueError, match="one of auto, ray, local"):
        choose_engine("threads", job, 1, None, running=False, cores=many)


def test_a_local_screen_imports_neither_ray_nor_scipy() -> None:
    """A small screen's start-up is its imports: Ray (the local engine needs none) and scipy (0.6 s, only training
    metrics use it) stay out of the screen's modules. A fresh interpreter, so that other tests' imports don't count."""
    import subprocess
    import sys

    code = "import sys, mtc_cli.app, mtc.screen.score; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'ray'" not in loaded and "'scipy'" not in loaded, loaded


def test_joining_the_ray_this_process_runs_frees_a_dead_trainings_cpus(ray_session) -> None:
    """A notebook's or a driver's next job: ``connect`` finds Ray running and frees the placement group a dead Ray
    Train controller of this process left, so the job's Ray Data stages (featurize, screen) get those CPUs."""
    from ray.util.placement_group import placement_group_table

    orphan = orphan_placement_group(0.5)
    assert placement_group_table(orphan)["state"] == "CREATED"
    connect()
    assert placement_group_table(orphan)["state"] == "REMOVED"
