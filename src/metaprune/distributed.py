"""One engine from a laptop's cores to a GPU cluster: ``torch.distributed`` helpers.

Every rank runs the same program on the same inputs; the work is split by TASK:

* meta-training: each rank takes a contiguous, deterministic share of every meta-batch's task
  indices (:func:`shard_range`); meta-gradients (Reptile: parameter deltas) are summed with one
  all-reduce and every rank takes the same masked optimiser step;
* evaluation: the fixed task list is sharded the same way and the per-task accuracies are put
  back in task order (:func:`gather_in_order`), so fingerprints and paired comparisons are
  unchanged;
* pruning: per-layer Hessians and meta-gradients are accumulated per rank and summed before
  scoring, so every rank derives the same masks.

Only rank 0 writes files and shows progress (:func:`is_main`). Outside ``torchrun`` (or
``--workers N``) every helper is a no-op and the code runs as one process.

Thread policy: each process uses ``--threads`` / ``METAPRUNE_THREADS`` torch threads, default 1,
and ``--workers`` / ``METAPRUNE_WORKERS`` processes, default one per physical core that the
process may run on (benchmarks/results/speed.md, 2 cores: next to one busy process, one process
with two threads trained at half and evaluated at 0.4x the speed of one with one thread; two
one-thread workers beat one two-thread process idle and loaded).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Iterable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

__all__ = ["is_distributed", "rank", "world_size", "is_main", "shard_range", "shard",
           "all_reduce_sum_", "gather_in_order", "broadcast_", "barrier", "same_on_all_ranks",
           "init_from_env",
           "physical_cores", "resolve_threads", "apply_threads", "resolve_workers", "launch",
           "in_launched_job", "shutdown", "die_with_launcher", "tune_allocator"]


# ---- who am I ------------------------------------------------------------------------------
def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes files and prints."""
    return rank() == 0


# ---- splitting the work ----------------------------------------------------------------------
def shard_range(n: int, rank_: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous share of ``range(n)``: the first ``n % world`` ranks get one more
    (ranks beyond ``n`` get an empty range)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items`` (see :func:`shard_range`)."""
    return [items[i] for i in shard_range(len(items))]


# ---- collectives (no-ops in one process) ----------------------------------------------------
def _packed(tensors: Iterable[torch.Tensor], collective) -> None:
    """Apply ``collective`` (in place, on one flat buffer) to the tensors, one call per dtype:
    small models send one message instead of one per parameter. Every rank must pass the same
    tensors in the same order: tensors of equal shape passed in another order are silently
    exchanged (iterate dicts in a fixed order, e.g. by sorted key)."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t.data if isinstance(t, torch.nn.Parameter)
                                               else t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        collective(flat)
        offset = 0
        for t in group:
            t.copy_(flat[offset: offset + t.numel()].view_as(t))
            offset += t.numel()


def all_reduce_sum_(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (one all-reduce per dtype)."""
    if is_distributed():
        _packed(tensors, dist.all_reduce)


def gather_in_order(local: torch.Tensor, n: int) -> torch.Tensor:
    """The length-``n`` float64 vector whose entries ``shard_range(n)`` are ``local`` on each
    rank (exact: every entry is a sum of one value and zeros)."""
    full = torch.zeros(n, dtype=torch.float64, device=local.device)
    idx = shard_range(n)
    full[idx.start: idx.stop] = local.to(torch.float64)
    all_reduce_sum_([full])
    return full


def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor with rank ``src``'s, in place."""
    if is_distributed():
        _packed(tensors, lambda flat: dist.broadcast(flat, src))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def same_on_all_ranks(value: int, what: str) -> int:
    """``value`` if every rank holds the same, else a ValueError naming ``what``: ranks that
    read different run state from disk (a run folder that is not shared between nodes) would
    otherwise make different numbers of collective calls and hang."""
    if not is_distributed():
        return value
    t = torch.tensor([value, -value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if t[0] != value or -t[1] != value:
        raise ValueError(f"the ranks disagree on {what} (this rank: {value}, range "
                         f"{-int(t[1])}..{int(t[0])}): the run folder must be on a filesystem "
                         "that every rank sees")
    return value


# ---- set-up ------------------------------------------------------------------------------------
def in_launched_job() -> bool:
    """True in a process started by torchrun / ``--workers`` (``WORLD_SIZE`` is set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def die_with_launcher() -> None:
    """Linux: have the kernel SIGKILL this worker when the process that started it (the
    launcher's agent) dies. The agent starts workers in sessions of their own, so killing the
    launcher (``kill -9``, the OOM killer) would otherwise leave them training and writing
    checkpoints next to the run that resumes."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    expected = os.environ.get("METAPRUNE_AGENT_PID")
    if expected and os.getppid() != int(expected):  # the agent died before prctl
        os._exit(1)


def check_device(device: str) -> torch.device:
    """``device`` as a torch.device; ValueError naming --device if it is CUDA and there is
    none."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


def init_from_env(device: str) -> str:
    """Join the process group that torchrun (or ``--workers``) describes in the environment:
    gloo on CPU, nccl on CUDA with one GPU per rank (``cuda`` becomes ``cuda:LOCAL_RANK``).
    Returns the device this rank should use; a no-op outside a launched job."""
    if not in_launched_job() or int(os.environ["WORLD_SIZE"]) < 2:
        return device
    die_with_launcher()
    cuda = device.startswith("cuda")
    if cuda:
        check_device(device)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"local rank {local} but only {torch.cuda.device_count()} GPU(s): "
                             "start at most one process per GPU (--nproc-per-node)")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():  # small CPU tensors (flags, counts) go through gloo
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    return device


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores: set[tuple[str, str]] = set()
    try:
        for cpu in allowed:
            base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
            with open(f"{base}/physical_package_id") as f1, open(f"{base}/core_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
    except OSError:
        return len(allowed)
    return max(1, len(cores))


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        v = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}='{raw}' is not an integer") from None
    if v < 1:
        raise ValueError(f"environment variable {name}={v} must be >= 1")
    return v


def resolve_threads(threads: int | None) -> int:
    """Torch threads for this process: ``--threads``, else ``METAPRUNE_THREADS``, else 1."""
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    return threads or _env_int("METAPRUNE_THREADS") or 1


def apply_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already started
        pass


# glibc mallopt parameters: keep freed memory for reuse instead of handing every large
# activation back to the kernel and faulting fresh zeroed pages in on the next step
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MALLOC_SETTINGS = {_M_MMAP_THRESHOLD: 32 << 20,   # glibc's largest: blocks < 32 MiB from the heap
                    _M_TRIM_THRESHOLD: 1 << 32,    # never shrink the heap below 4 GiB of slack
                    _M_TOP_PAD: 512 << 20}         # grow it 512 MiB (virtual) at a time


def tune_allocator() -> bool:
    """Linux/glibc: keep freed heap memory for reuse (``mallopt``). Meta-learning allocates
    and frees the same activation sizes every task; glibc returns blocks above a moving
    threshold to the kernel, and every new step then page-faults zeroed memory in again. On
    this project's 2-core CPU that made a Conv4-32 20-way meta-iteration about 1.4x slower
    (benchmarks/results/speed.md). The cost: the process keeps its peak heap. Set
    ``METAPRUNE_MALLOC=0`` to leave the allocator alone. Returns whether it was tuned."""
    if os.environ.get("METAPRUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    return all(libc.mallopt(k, v) == 1 for k, v in _MALLOC_SETTINGS.items())


def resolve_workers(workers: int | None, work_units: int | None = None,
                    gpus: int | None = None) -> int:
    """Processes for one machine: ``--workers``, else ``METAPRUNE_WORKERS``, else one per
    physical core (one per GPU when ``gpus`` is given), capped by ``work_units``."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    chosen = workers or _env_int("METAPRUNE_WORKERS")
    if chosen is None:
        chosen = max(1, gpus) if gpus is not None else physical_cores()
        if work_units is not None:
            chosen = min(chosen, max(1, work_units))
    return chosen


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, argv: Sequence[str], threads: int) -> int:
    """Run ``python -m metaprune ARGV`` as ``nproc`` ranks on this machine through PyTorch's
    elastic launcher (what ``torchrun --standalone`` does); returns the exit code (the first
    failing rank's, else 0)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # a failing rank prints its own error; the agent's log line about it would repeat it
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ["METAPRUNE_THREADS"] = str(threads)
    os.environ["METAPRUNE_AGENT_PID"] = str(os.getpid())  # the agent runs in this process
    os.environ["OMP_NUM_THREADS"] = str(threads)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0",
                          run_id=str(uuid.uuid4()), max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, sys.executable)("-m", "metaprune", *argv)
    except ChildFailedError as e:
        codes = [f.exitcode for _, f in sorted(e.failures.items())]
        code = next((c for c in codes if c), 1)
        return code if code > 0 else 128 - code  # killed by signal N: 128 + N, as a shell says
    return 0
