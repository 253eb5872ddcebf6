"""How many torch threads one process runs: its share of the physical cores it may use.

torch defaults to one intra-op thread per logical CPU of the machine, whatever the process's CPU
affinity (``taskset``, a container's cpuset) and however many sibling processes share the cores.
On a 2-core machine one extra busy process makes 2-thread OpenMP steps 10-20× slower (threads
spin-wait on each other), so each process takes ``physical cores it may use // processes on this
node`` threads (at least 1). An explicit ``OMP_NUM_THREADS`` wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

_SYS_CPU = Path("/sys/devices/system/cpu")


@dataclass(frozen=True)
class ThreadPlan:
    """The thread count chosen for this process and why.

    logical: CPUs in this process's affinity mask; physical: distinct cores among them;
    local_world_size: processes sharing them (DDP ranks on this node); threads: torch intra-op
    threads set; source: ``"cores"`` (computed) or ``"OMP_NUM_THREADS"`` (the user's value kept).
    """

    logical: int
    physical: int
    local_world_size: int
    threads: int
    source: str

    def describe(self) -> str:
        """e.g. ``threads 2 (2 physical cores / 1 process)``."""
        if self.source != "cores":
            return f"threads {self.threads} (from {self.source})"
        procs = f"{self.local_world_size} process{'es' if self.local_world_size != 1 else ''}"
        return f"threads {self.threads} ({self.physical} physical cores / {procs})"


def allowed_cpus() -> set[int]:
    """Logical CPUs this process may run on (its affinity mask; all CPUs where that is unknown)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], sys_cpu: Path = _SYS_CPU) -> int:
    """Distinct physical cores among logical ``cpus`` (hyper-threads of one core count once).

    Reads Linux's ``topology/{physical_package_id,core_id}``; where they are missing, every logical
    CPU counts as a core.
    """
    cores = set()
    for cpu in cpus:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def launcher_world_size(default: int = 1) -> int:
    """Processes of this job on this node: ``LOCAL_WORLD_SIZE`` (torchrun) if set, else ``default``."""
    try:
        return max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    except (KeyError, ValueError):
        return max(1, default)


def plan_threads(local_world_size: int = 1, cpus: set[int] | None = None,
                 sys_cpu: Path = _SYS_CPU, env: dict | None = None) -> ThreadPlan:
    """The thread count for one of ``local_world_size`` processes sharing ``cpus`` (no side effects)."""
    env = os.environ if env is None else env
    cpus = allowed_cpus() if cpus is None else cpus
    physical = min(physical_cores(cpus, sys_cpu), len(cpus))
    world = max(1, int(local_world_size))
    explicit = env.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return ThreadPlan(len(cpus), physical, world, int(explicit), "OMP_NUM_THREADS")
    return ThreadPlan(len(cpus), physical, world, max(1, physical // world), "cores")


def configure_threads(local_world_size: int = 1) -> ThreadPlan:
    """Set torch's intra-op threads to this process's share of its physical cores; return the plan.

    Call once at start-up, with the number of processes this job runs on this node (DDP ranks;
    ``LOCAL_WORLD_SIZE``, when torchrun sets it, takes precedence).
    """
    plan = plan_threads(launcher_world_size(default=local_world_size))
    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
    return plan

