"""What a training run reserves on the Ray cluster: one plan from the scaling config, checked before work.

Every consumer (the resource check of ``mtc train``, the tune's concurrency plan, the per-worker batch check,
the torch thread count) reads the same ``WorkerPlan``, so they never disagree on how many workers run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from mtc.config import ScalingConfig
from mtc.errors import MtcError

DATA_CPUS = 1.0  # CPUs left for Ray Data while training; a starved pipeline hangs silently
GPU_THREADS = 4  # torch CPU threads of a GPU worker (collation, host-side work)


class ResourceError(MtcError):
    """The Ray cluster cannot hold what was asked."""


@dataclass(frozen=True)
class WorkerPlan:
    """Ray Train workers of one run: ``gpus`` > 0 means that many NCCL workers, one GPU each, else CPU workers."""

    workers: int
    gpus_per_worker: int
    cpus_per_worker: float

    @classmethod
    def of(cls, scaling: ScalingConfig) -> WorkerPlan:
        return cls(scaling.gpus or scaling.workers, 1 if scaling.gpus else 0, scaling.cpus_per_worker)

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def gpus(self) -> int:
        return self.workers * self.gpus_per_worker

    @property
    def cpus(self) -> float:
        """CPUs the run reserves: its workers plus what its Ray Data pipeline needs."""
        return self.workers * self.cpus_per_worker + DATA_CPUS

    def resources_per_worker(self) -> dict[str, float]:
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}

    def torch_threads(self, cluster_cpus: float) -> int:
        """Intra-op threads per worker: the CPUs Ray Data leaves, shared among CPU workers."""
        if self.use_gpu:
            return GPU_THREADS
        return max(1, int(cluster_cpus - DATA_CPUS) // self.workers)


def check_resources(
    plan: WorkerPlan,
    cluster: Mapping[str, float],
    extra_cpus: float = 0.0,
    gpu_flag: str = "--gpus",
    worker_flag: str = "--workers",
) -> int:
    """How many such runs the cluster holds at once; ResourceError (before any work) if not even one.

    Args:
        plan: the run's workers.
        cluster: ``ray.cluster_resources()``.
        extra_cpus: CPUs each run needs beside the plan's (a tune trial's driver).
        gpu_flag, worker_flag: the options the message tells the user to change.
    """
    cpus, gpus = float(cluster.get("CPU", 0)), int(cluster.get("GPU", 0))
    if plan.use_gpu and gpus < plan.gpus:
        instead = (
            f"use {gpu_flag} {gpus} or fewer, or {worker_flag} N for CPU workers"
            if gpus
            else f"run on CPU workers with {worker_flag} N, or point --address at a GPU cluster"
        )
        raise ResourceError(
            f"{gpu_flag} {plan.gpus} asks for {plan.gpus} GPU workers, but the Ray cluster has "
            f"{f'{gpus} GPU(s)' if gpus else 'no GPU'} ({cpus:g} CPUs); {instead}"
        )
    need = plan.cpus + extra_cpus
    if need > cpus:
        extra = f" + {extra_cpus:g} CPU for the trial" if extra_cpus else ""
        raise ResourceError(
            f"{plan.workers} worker(s) x {plan.cpus_per_worker:g} CPU + {DATA_CPUS:g} CPU for Ray Data{extra} need "
            f"{need:g} CPUs; the Ray cluster has {cpus:g}. Lower {worker_flag} or scaling.cpus_per_worker"
        )
    holds = math.floor(cpus / need + 1e-9)
    return min(holds, gpus // plan.gpus) if plan.use_gpu else holds


def check_compiler(compile_convs: bool, plan: WorkerPlan) -> None:
    """ResourceError (before any work) when ``compile: true`` asks CPU workers for a C++ compiler this node lacks.

    Inductor builds the fused convolutions with the C++ compiler it finds (``$CXX``, then ``c++``/``g++``...); GPU
    workers use Triton instead. The check runs on the driver's node, which stands for CPU nodes built alike.
    """
    if not compile_convs or plan.use_gpu:
        return
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise ResourceError(
            "compile: true fuses the convolutions with a C++ compiler, and none was found on this node "
            "(set CXX, or install g++ / clang++); or train uncompiled with --set compile=false"
        ) from None
