"""MLP value and Q critics as ordinary modules, usable with ``functional_call``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaops.rl._policies import mlp

__all__ = ["ValueCritic", "QCritic"]


class ValueCritic(nn.Module):
    r"""MLP state-value critic $V_\phi(s)$.

    Args:
        obs_dim: Observation size.
        hidden_sizes: Hidden layer widths.
        activation: Activation module class.

    Examples:
        >>> critic = ValueCritic(3, hidden_sizes=(8,))
        >>> critic(torch.zeros(4, 10, 3)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        obs_dim: int,
        *,
        hidden_sizes: tuple[int, ...] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim, tuple(hidden_sizes), 1, activation)

    def forward(self, obs: Tensor) -> Tensor:
        """Returns $V(s)$, shape `(...)` for observations `(..., obs_dim)`."""
        return self.net(obs).squeeze(-1)


class QCritic(nn.Module):
    r"""MLP action-value critic $Q_\phi(s, a)$ on the concatenation $[s, a]$.

    Args:
        obs_dim: Observation size.
        act_dim: Action size (use one-hot actions for discrete action spaces).
        hidden_sizes: Hidden layer widths.
        activation: Activation module class.

    Examples:
        >>> critic = QCritic(3, 2, hidden_sizes=(8,))
        >>> critic(torch.zeros(5, 3), torch.zeros(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden_sizes: tuple[int, ...] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.net = mlp(obs_dim + act_dim, tuple(hidden_sizes), 1, activation)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        """Returns $Q(s, a)$, shape `(...)` for `(..., obs_dim)` and `(..., act_dim)` inputs."""
        if obs.shape[:-1] != act.shape[:-1]:
            raise ValueError(f"obs {tuple(obs.shape)} and act {tuple(act.shape)} must share leading dims")
        return self.net(torch.cat([obs, act.to(obs.dtype)], dim=-1)).squeeze(-1)
