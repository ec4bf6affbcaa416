"""The meta-training loop: deterministic task stream, periodic atomic checkpoints, resume.

Iteration ``i`` always trains on tasks ``i*B .. i*B+B-1`` of the sampler, so a run killed and
resumed from its last checkpoint sees exactly the task stream an uninterrupted run would. Under
torch.distributed each rank builds only its contiguous share of those indices; only rank 0
writes checkpoints and shows progress.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, paths, read_meta, save_checkpoint
from .data.tasks import OffsetSampler, TaskSampler
from .distributed import (
    barrier,
    broadcast_,
    is_main,
    same_on_all_ranks,
    shard_range,
    world_size,
)
from .finite import NonFiniteError, non_finite
from .learners import Learner


def meta_train(learner: Learner, sampler: TaskSampler | OffsetSampler, iterations: int,
               meta_batch: int, start_iteration: int = 0,
               checkpoint_path: str | os.PathLike | None = None,
               checkpoint_every: int = 100, meta: dict | None = None,
               device: str | torch.device = "cpu", progress: bool = True,
               on_step: Callable[[int, dict], None] | None = None,
               desc: str = "meta-train") -> list[dict]:
    """Run iterations ``start_iteration .. iterations-1``; returns the per-iteration stats.

    With ``checkpoint_path``, the learner (and optimiser state) is saved atomically every
    ``checkpoint_every`` iterations and at the end, with ``meta["iteration"]`` = iterations done
    ``meta["torch_threads"]`` and ``meta["world_sizes"]``: the torch thread counts and numbers of
    ranks the run used (the float reduction order, hence the exact weights, depends on them).
    """
    if meta_batch < 1:
        raise ValueError(f"meta_batch must be >= 1, got {meta_batch}")
    history: list[dict] = []
    meta = dict(meta or {})
    threads, worlds = {torch.get_num_threads()}, {world_size()}
    if start_iteration > 0 and checkpoint_path is not None and Path(
            paths(checkpoint_path)[1]).exists():
        before = read_meta(checkpoint_path)
        threads.update(before.get("torch_threads", []))
        worlds.update(before.get("world_sizes", []))
        # resuming: the time already spent counts, so train_seconds stays the whole run's
        meta.setdefault("train_seconds_before", float(before.get("train_seconds", 0.0)))
    meta["torch_threads"] = sorted(threads | set(meta.get("torch_threads", [])))
    meta["world_sizes"] = sorted(worlds | set(meta.get("world_sizes", [])))
    same_on_all_ranks(start_iteration, "the iteration to resume from")
    progress = progress and is_main()
    # every rank starts from rank 0's weights (they are equal already when every rank built
    # the model from the same seed or checkpoint; this makes it a guarantee)
    broadcast_([*learner.meta_parameters().values(), *learner.model.buffers()])
    mine = shard_range(meta_batch)
    bar = tqdm(range(start_iteration, iterations), desc=desc, disable=not progress,
               initial=start_iteration, total=iterations, dynamic_ncols=True)
    t0 = time.perf_counter()
    for it in bar:
        tasks = [t.to(device) for t in sampler.batch(it * meta_batch + mine.start, len(mine))]
        # (a learner subclass with the one-argument meta_step still works in one process)
        try:
            stats = (learner.meta_step(tasks, batch_size=meta_batch) if world_size() > 1
                     else learner.meta_step(tasks))
        except NonFiniteError as e:
            first = it * meta_batch + mine.start
            raise NonFiniteError(
                f"meta-training diverged at iteration {it + 1}: {e}; tasks of the training "
                f"stream{SHARE_NOTE if world_size() > 1 else ''} that give a non-finite loss: "
                f"{_diverging(learner, tasks, first)}. "
                + _stop_note(checkpoint_path)) from None
        bad = non_finite(learner.meta_parameters())
        if bad:
            raise NonFiniteError(
                f"meta-training diverged at iteration {it + 1}: the meta-optimiser step made "
                f"{', '.join(bad[:3])} non-finite (meta_lr {learner.meta_lr}). "
                + _stop_note(checkpoint_path))
        stats["iteration"] = it + 1
        history.append(stats)
        if on_step is not None:
            on_step(it + 1, stats)
        if progress and (it + 1) % 10 == 0:
            recent = history[-10:]
            bar.set_postfix(loss=f"{sum(h['loss'] for h in recent) / len(recent):.3f}",
                            acc=f"{sum(h['acc'] for h in recent) / len(recent):.3f}")
        done = it + 1
        if checkpoint_path is not None and (done % checkpoint_every == 0 or done == iterations):
            meta["iteration"] = done
            meta["train_seconds"] = meta.get("train_seconds_before", 0.0) + (
                time.perf_counter() - t0)
            if is_main():
                save_checkpoint(checkpoint_path, learner, meta)
    barrier()  # the last checkpoint exists for every rank that reads it next
    return history


SHARE_NOTE = " (among this rank's share of the meta-batch)"


def _diverging(learner: Learner, tasks: list, first_index: int) -> list[int]:
    """Stream indices of the tasks whose meta-loss is not finite with the current weights."""
    return [first_index + i for i, t in enumerate(tasks)
            if not math.isfinite(learner.task_loss(t)[0].item())]


def _stop_note(checkpoint_path: str | os.PathLike | None) -> str:
    done = None if checkpoint_path is None else last_iteration(checkpoint_path)
    kept = (f"The last checkpoint ('{checkpoint_path}', iteration {done}) is untouched. "
            if done else "")
    return kept + ("Stopped: lower learner.meta_lr or learner.inner_lr and train again into "
                   "a new --out.")


def last_iteration(checkpoint_path: str | os.PathLike) -> int | None:
    """Iterations recorded in an existing checkpoint, or None if there is none."""
    st, js = paths(checkpoint_path)
    if not Path(st).exists():
        return None
    try:  # read_meta completes a save killed between its two renames (even the first one)
        return int(read_meta(checkpoint_path).get("iteration", 0))
    except CheckpointError:
        if Path(js).exists():
            raise
        return None
