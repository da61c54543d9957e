"""Shared fixtures of the meta-RL recipe tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The recipes set torch's thread count (Args.threads); give other tests back the default."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
