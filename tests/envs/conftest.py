"""Fixtures for the environment and sampler tests: a stand-in Gaussian policy.

`metaops.rl` provides the real policies; this local module has the same interface
(`forward(obs) -> (mean, log_std)`, `sample(dist, *, generator)`, `log_prob(dist, actions)`).
"""

import math

import pytest
import torch
from torch import nn


class GaussianPolicy(nn.Module):
    """A small Gaussian MLP policy with a state-independent log standard deviation."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 32, log_std: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, action_dim))
        self.log_std = nn.Parameter(torch.full((action_dim,), log_std))

    def forward(self, obs):
        mean = self.body(obs)
        return mean, self.log_std.expand_as(mean)

    def sample(self, dist, *, generator=None):
        mean, log_std = dist
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + log_std.exp() * noise

    def log_prob(self, dist, actions):
        mean, log_std = dist
        z = (actions - mean) / log_std.exp()
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


@pytest.fixture
def make_policy():
    def factory(obs_dim, action_dim, **kwargs):
        torch.manual_seed(0)
        return GaussianPolicy(obs_dim, action_dim, **kwargs)

    return factory
