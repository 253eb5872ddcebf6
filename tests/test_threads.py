"""Thread plan: each process takes its share of the physical cores it may use, at least one."""

from __future__ import annotations

import pytest
import torch

from common import threads
from common.threads import configure_threads, physical_cores, plan_threads


def fake_topology(root, cores: dict[int, tuple[int, int]]):
    """A /sys/devices/system/cpu look-alike: logical cpu → (package, core)."""
    for cpu, (package, core) in cores.items():
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{package}\n")
        (topo / "core_id").write_text(f"{core}\n")
    return root


@pytest.fixture
def smt8(tmp_path):
    """8 logical CPUs = 4 cores × 2 hyper-threads on one package."""
    return fake_topology(tmp_path, {cpu: (0, cpu % 4) for cpu in range(8)})


def test_hyperthreads_count_once(smt8):
    assert physical_cores(set(range(8)), smt8) == 4
    assert physical_cores({0, 4}, smt8) == 1          # two threads of core 0
    assert physical_cores({0, 1, 2}, smt8) == 3


def test_missing_topology_counts_logical_cpus(tmp_path):
    assert physical_cores({0, 1, 2}, tmp_path) == 3


@pytest.mark.parametrize("cpus,world,expected", [
    (set(range(8)), 1, 4),      # whole machine, one process: its 4 physical cores
    (set(range(8)), 2, 2),      # DDP, 2 processes: 2 each
    (set(range(8)), 3, 1),      # 4 // 3
    (set(range(8)), 8, 1),      # never 0
    ({0, 1}, 1, 2),             # affinity restricted (taskset -c 0,1)
    ({0, 4}, 1, 1),             # two hyper-threads of one core
])
def test_share_of_cores(smt8, cpus, world, expected):
    plan = plan_threads(world, cpus=cpus, sys_cpu=smt8, env={})
    assert (plan.threads, plan.local_world_size, plan.source) == (expected, world, "cores")
    assert plan.describe().startswith(f"threads {expected} (")


def test_omp_num_threads_wins(smt8):
    plan = plan_threads(2, cpus=set(range(8)), sys_cpu=smt8, env={"OMP_NUM_THREADS": "3"})
    assert (plan.threads, plan.source) == (3, "OMP_NUM_THREADS")
    assert plan_threads(2, cpus=set(range(8)), sys_cpu=smt8, env={"OMP_NUM_THREADS": "x"}).threads == 2


def test_configure_threads_sets_torch(monkeypatch, smt8):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "_SYS_CPU", smt8)
    monkeypatch.setattr(threads, "allowed_cpus", lambda: set(range(8)))
    monkeypatch.setattr(threads.plan_threads, "__defaults__", (1, None, smt8, None))
    try:
        assert configure_threads(2).threads == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's count wins over the argument
        assert configure_threads(1).threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
