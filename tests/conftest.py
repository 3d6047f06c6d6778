"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread for the whole suite: the models in the tests are tiny, and on a shared
    2-core machine one thread was measured 5-20x faster than two threads fighting for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def threads_restored():
    """Every test starts and ends with the suite's one thread: a command-line run inside a test may
    set the thread count (``--threads``, or the CPU probe's choice), and a leaked count changes the
    floating-point rounding of later tests that compare runs bit for bit."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
