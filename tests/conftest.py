"""Shared test settings."""

import os

import pytest

# Tiny models: thread hand-offs cost far more than the maths on a busy 2-core
# machine (a tiny conv: 0.1 ms on one thread, 20+ ms on two). Subprocesses that
# tests start inherit the environment variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread_per_process():
    import torch

    torch.set_num_threads(1)
    yield
