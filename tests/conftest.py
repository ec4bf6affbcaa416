"""Shared test set-up."""

from __future__ import annotations

import os

import pytest
import torch

# in-process CLI calls stay one process unless a test asks for --workers (tests/
# test_distributed.py does); a worker count from the caller's environment does not leak in
os.environ["METAPRUNE_WORKERS"] = "1"
os.environ.pop("METAPRUNE_THREADS", None)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run as fast on one intra-op thread, and a busy 2-core machine makes two
    spin-waiting threads up to 100x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
