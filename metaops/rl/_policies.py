"""Gaussian and categorical MLP policies usable functionally, and their pure distribution maths.

A policy's ``forward`` returns distribution parameters, so
``torch.func.functional_call(policy, params, (obs,))`` works with per-task ``params`` under
``vmap``. The methods ``log_prob``, ``sample``, ``entropy``, ``kl`` and ``mode`` use no
parameters: they act on those distribution parameters and delegate to the pure functions here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metaops.estimators._validate import check_float

__all__ = [
    "gaussian_log_prob",
    "gaussian_kl",
    "gaussian_entropy",
    "gaussian_sample",
    "categorical_log_prob",
    "categorical_kl",
    "categorical_entropy",
    "categorical_sample",
    "GaussianMLPPolicy",
    "CategoricalMLPPolicy",
]

_LOG_2PI = math.log(2 * math.pi)


def mlp(in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, activation: type[nn.Module]) -> nn.Sequential:
    """A plain MLP: Linear, activation, ..., Linear (no output activation)."""
    layers: list[nn.Module] = []
    sizes = (in_dim, *hidden_sizes)
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), activation()]
    layers.append(nn.Linear(sizes[-1], out_dim))
    return nn.Sequential(*layers)


def _check_same(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    r"""Log-density of a diagonal Gaussian, **summed** over the action dimensions.

    $$\log \mathcal{N}(a;\mu,\sigma) = -\sum_{i=1}^{d} \Big[\frac{(a_i - \mu_i)^2}{2\sigma_i^2}
      + \log\sigma_i + \tfrac12 \log 2\pi\Big].$$

    Args:
        mean: $\mu$, shape `(..., d)`.
        log_std: $\log\sigma$, shape `(..., d)` (broadcast to ``mean``'s shape).
        actions: $a$, shape `(..., d)`.

    Returns:
        Shape `(...)`.

    Raises:
        TypeError: If an input is not floating point.
        ValueError: If ``actions`` and ``mean`` have different shapes.

    Examples:
        >>> gaussian_log_prob(torch.zeros(2), torch.zeros(2), torch.zeros(2))
        tensor(-1.8379)
    """
    for name, x in (("mean", mean), ("log_std", log_std), ("actions", actions)):
        check_float(name, x)
    _check_same("actions", actions, "mean", mean)
    z = (actions - mean) * torch.exp(-log_std)
    return -(0.5 * z**2 + log_std + 0.5 * _LOG_2PI).sum(-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    r"""$\mathrm{KL}(p \,\|\, q)$ between diagonal Gaussians, summed over action dimensions.

    $$\sum_i \Big[\log\frac{\sigma_{q,i}}{\sigma_{p,i}}
      + \frac{\sigma_{p,i}^2 + (\mu_{p,i} - \mu_{q,i})^2}{2\sigma_{q,i}^2} - \tfrac12\Big].$$

    Args:
        mean_p: $\mu_p$, shape `(..., d)`.
        log_std_p: $\log\sigma_p$, shape `(..., d)`.
        mean_q: $\mu_q$, shape `(..., d)`.
        log_std_q: $\log\sigma_q$, shape `(..., d)`.

    Returns:
        Shape `(...)`, non-negative; differentiable in both arguments.

    Examples:
        >>> gaussian_kl(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.zeros(1))
        tensor(0.5000)
    """
    _check_same("mean_q", mean_q, "mean_p", mean_p)
    var_ratio = torch.exp(2 * (log_std_p - log_std_q))
    diff = (mean_p - mean_q) * torch.exp(-log_std_q)
    return (log_std_q - log_std_p + 0.5 * (var_ratio + diff**2) - 0.5).sum(-1)


def gaussian_entropy(log_std: Tensor) -> Tensor:
    r"""Entropy of a diagonal Gaussian, $\sum_i \log\sigma_i + \tfrac12\log(2\pi e)$.

    Args:
        log_std: $\log\sigma$, shape `(..., d)`.

    Returns:
        Shape `(...)`.

    Examples:
        >>> gaussian_entropy(torch.zeros(1))
        tensor(1.4189)
    """
    check_float("log_std", log_std)
    return (log_std + 0.5 * (_LOG_2PI + 1.0)).sum(-1)


def gaussian_sample(mean: Tensor, log_std: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    r"""Draws $a = \mu + \sigma \odot \varepsilon$, $\varepsilon \sim \mathcal{N}(0, I)$ (no graph).

    Call it outside ``torch.func`` transforms, in the rollout loop. A ``generator`` must live on
    the device of ``mean``.

    Args:
        mean: $\mu$, shape `(..., d)`.
        log_std: $\log\sigma$, shape `(..., d)`.
        generator: Optional random generator.

    Returns:
        Detached actions, shape `(..., d)`.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> gaussian_sample(torch.zeros(3), torch.full((3,), -30.0), generator=g).abs().max() < 1e-6
        tensor(True)
    """
    with torch.no_grad():
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(log_std) * noise


def _check_actions(logits: Tensor, actions: Tensor) -> None:
    if actions.is_floating_point() or actions.is_complex() or actions.dtype == torch.bool:
        raise TypeError(f"categorical actions must be an integer tensor, got {actions.dtype}")
    if actions.shape != logits.shape[:-1]:
        raise ValueError(
            f"actions has shape {tuple(actions.shape)} but logits {tuple(logits.shape)} need "
            f"actions of shape {tuple(logits.shape[:-1])}"
        )


def categorical_log_prob(logits: Tensor, actions: Tensor) -> Tensor:
    r"""Log-probability $\log\operatorname{softmax}(\ell)_a$ of integer actions.

    Args:
        logits: $\ell$, shape `(..., num_actions)`.
        actions: Integer actions, shape `(...)`.

    Returns:
        Shape `(...)`.

    Raises:
        TypeError: If ``actions`` is not an integer tensor or ``logits`` is not floating point.
        ValueError: If the shapes do not match.

    Examples:
        >>> categorical_log_prob(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor([-1.3863, -1.3863])
    """
    check_float("logits", logits)
    _check_actions(logits, actions)
    log_p = torch.log_softmax(logits, dim=-1)
    return log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def categorical_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    r"""$\mathrm{KL}(p\,\|\,q) = \sum_a p_a (\log p_a - \log q_a)$ between categoricals.

    Args:
        logits_p: Logits of $p$, shape `(..., num_actions)`.
        logits_q: Logits of $q$, shape `(..., num_actions)`.

    Returns:
        Shape `(...)`; differentiable in both arguments.

    Examples:
        >>> categorical_kl(torch.zeros(2), torch.zeros(2))
        tensor(0.)
    """
    _check_same("logits_q", logits_q, "logits_p", logits_p)
    log_p = torch.log_softmax(logits_p, -1)
    log_q = torch.log_softmax(logits_q, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def categorical_entropy(logits: Tensor) -> Tensor:
    r"""Entropy $-\sum_a p_a \log p_a$ of a categorical distribution.

    Args:
        logits: Shape `(..., num_actions)`.

    Returns:
        Shape `(...)`.

    Examples:
        >>> categorical_entropy(torch.zeros(4))  # log 4
        tensor(1.3863)
    """
    log_p = torch.log_softmax(logits, -1)
    return -(log_p.exp() * log_p).sum(-1)


def categorical_sample(logits: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    r"""Draws integer actions $a \sim \operatorname{softmax}(\ell)$ (no graph).

    Call it outside ``torch.func`` transforms, in the rollout loop.

    Args:
        logits: Shape `(..., num_actions)`.
        generator: Optional random generator.

    Returns:
        ``int64`` actions of shape `(...)`.

    Examples:
        >>> categorical_sample(torch.tensor([[0.0, -1e9], [-1e9, 0.0]]))
        tensor([0, 1])
    """
    with torch.no_grad():
        probs = torch.softmax(logits, -1).reshape(-1, logits.shape[-1])
        draws = torch.multinomial(probs, 1, generator=generator)
        return draws.reshape(logits.shape[:-1])


class GaussianMLPPolicy(nn.Module):
    r"""Diagonal Gaussian MLP policy with a learned, state-independent log standard deviation.

    $\pi_\theta(a\mid s) = \mathcal{N}\big(a;\ \mu_\theta(s),\ \operatorname{diag}(e^{2\log\sigma})
    \big)$, with $\mu_\theta$ an MLP and $\log\sigma$ a parameter vector named ``log_std``.
    ``forward(obs)`` returns the distribution parameters ``(mean, log_std)``, ``log_std``
    broadcast to ``mean``'s shape; use ``torch.func.functional_call(policy, params, (obs,))``
    with your own (adapted) ``params``.

    Args:
        obs_dim: Observation size.
        act_dim: Action size $d$.
        hidden_sizes: Hidden layer widths.
        activation: Activation module class.
        init_log_std: Initial $\log\sigma$.

    Examples:
        >>> policy = GaussianMLPPolicy(3, 2, hidden_sizes=(8,))
        >>> params = dict(policy.named_parameters())
        >>> obs = torch.zeros(5, 3)
        >>> dist = torch.func.functional_call(policy, params, (obs,))
        >>> actions = policy.sample(dist, generator=torch.Generator().manual_seed(0))
        >>> policy.log_prob(dist, actions).shape
        torch.Size([5])
        >>> policy.kl(dist, dist)
        tensor([0., 0., 0., 0., 0.], grad_fn=<SumBackward1>)
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden_sizes: tuple[int, ...] = (100, 100),
        activation: type[nn.Module] = nn.Tanh,
        init_log_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.mean_net = mlp(obs_dim, tuple(hidden_sizes), act_dim, activation)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(mean, log_std)``, both of shape `(..., act_dim)`."""
        mean = self.mean_net(obs)
        return mean, self.log_std.expand_as(mean)

    def log_prob(self, dist: tuple[Tensor, Tensor], actions: Tensor) -> Tensor:
        """Log-density summed over action dimensions, shape `(...)`."""
        return gaussian_log_prob(dist[0], dist[1], actions)

    def sample(self, dist: tuple[Tensor, Tensor], *, generator: torch.Generator | None = None) -> Tensor:
        """Detached actions, shape `(..., act_dim)`; call outside transforms."""
        return gaussian_sample(dist[0], dist[1], generator=generator)

    def entropy(self, dist: tuple[Tensor, Tensor]) -> Tensor:
        """Entropy, shape `(...)`."""
        return gaussian_entropy(dist[1])

    def kl(self, dist_p: tuple[Tensor, Tensor], dist_q: tuple[Tensor, Tensor]) -> Tensor:
        """$\\mathrm{KL}(p\\,\\|\\,q)$, shape `(...)`."""
        return gaussian_kl(dist_p[0], dist_p[1], dist_q[0], dist_q[1])

    def mode(self, dist: tuple[Tensor, Tensor]) -> Tensor:
        """The mean action."""
        return dist[0]


class CategoricalMLPPolicy(nn.Module):
    r"""Categorical MLP policy: $\pi_\theta(a\mid s) = \operatorname{softmax}(\ell_\theta(s))_a$.

    ``forward(obs)`` returns the logits, shape `(..., num_actions)`.

    Args:
        obs_dim: Observation size.
        num_actions: Number of discrete actions.
        hidden_sizes: Hidden layer widths.
        activation: Activation module class.

    Examples:
        >>> policy = CategoricalMLPPolicy(4, 2, hidden_sizes=(8,))
        >>> logits = policy(torch.zeros(3, 4))
        >>> actions = policy.sample(logits)
        >>> policy.log_prob(logits, actions).shape, policy.mode(logits).dtype
        (torch.Size([3]), torch.int64)
    """

    def __init__(
        self,
        obs_dim: int,
        num_actions: int,
        *,
        hidden_sizes: tuple[int, ...] = (100, 100),
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        self.logits_net = mlp(obs_dim, tuple(hidden_sizes), num_actions, activation)

    def forward(self, obs: Tensor) -> Tensor:
        """Returns the logits, shape `(..., num_actions)`."""
        return self.logits_net(obs)

    def log_prob(self, dist: Tensor, actions: Tensor) -> Tensor:
        """Log-probability of integer ``actions`` (shape `(...)`)."""
        return categorical_log_prob(dist, actions)

    def sample(self, dist: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Detached ``int64`` actions, shape `(...)`; call outside transforms."""
        return categorical_sample(dist, generator=generator)

    def entropy(self, dist: Tensor) -> Tensor:
        """Entropy, shape `(...)`."""
        return categorical_entropy(dist)

    def kl(self, dist_p: Tensor, dist_q: Tensor) -> Tensor:
        """$\\mathrm{KL}(p\\,\\|\\,q)$, shape `(...)`."""
        return categorical_kl(dist_p, dist_q)

    def mode(self, dist: Tensor) -> Tensor:
        """The most likely action, ``int64`` of shape `(...)`."""
        return dist.argmax(-1)
