"""A placement group whose creating actor is dead: what a killed Ray Train controller leaves behind."""

from __future__ import annotations

import time


def orphan_placement_group(cpus: float):
    """Reserves ``cpus`` CPUs in a placement group made by an actor, kills the actor and returns the group once the
    GCS records the actor dead (the state ``mtc.cluster.release_orphan_placement_groups`` looks for)."""
    import ray
    from ray._private.state import actors
    from ray.util.placement_group import placement_group

    @ray.remote(num_cpus=0)
    class Controller:  # stands in for a Ray Train controller killed with its trial or its run
        def reserve(self):
            group = placement_group([{"CPU": cpus}])
            ray.get(group.ready())
            return group

    controller = Controller.remote()
    group = ray.get(controller.reserve.remote())
    ray.kill(controller)
    deadline = time.monotonic() + 30
    while actors(controller._actor_id.hex())["State"] != "DEAD" and time.monotonic() < deadline:
        time.sleep(0.1)
    return group
