"""Shared test helpers: tree comparisons and a small float64 regression problem."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metaops.tree import tree_leaves, tree_map


def assert_trees_close(a, b, *, rtol=1e-7, atol=1e-9):
    leaves_a, leaves_b = tree_leaves(a), tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    tree_map(lambda x, y: torch.testing.assert_close(x, y, rtol=rtol, atol=atol), a, b)


def make_mlp(dtype=torch.float64, seed=0, hidden=8):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(dtype)


def toy_regression(num_tasks=4, shots=6, dtype=torch.float64, seed=0):
    """Returns (model, loss_fn, theta, support, query) for a tiny smooth regression problem."""
    model = make_mlp(dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    amplitude = 0.5 + torch.rand(num_tasks, 1, 1, generator=g, dtype=dtype)
    phase = torch.rand(num_tasks, 1, 1, generator=g, dtype=dtype)

    def data():
        x = 4 * torch.rand(num_tasks, shots, 1, generator=g, dtype=dtype) - 2
        return x, amplitude * torch.sin(x - phase)

    def loss_fn(params, batch):
        x, y = batch
        return F.mse_loss(torch.func.functional_call(model, params, (x,)), y)

    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    return model, loss_fn, theta, data(), data()


def index_task(batch, i):
    return tree_map(lambda x: x[i], batch)
