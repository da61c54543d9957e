r"""Soft actor-critic (SAC) building blocks as pure functions of parameter dicts.

The policy is a tanh-squashed Gaussian, the critic a pair of Q-networks with a slowly moving
target copy, and the temperature $\alpha = e^{\log\alpha}$ is tuned towards a target entropy.
Every loss takes the modules and their parameter dicts (used through
``torch.func.functional_call``) and the sampling noise as explicit tensors, so one call of
``torch.func.vmap`` over a leading task dimension of the parameters, the batches and the noise
trains one expert per task; no random numbers are drawn inside the losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metaops.estimators._validate import check_finite, check_float
from metaops.rl._critics import QCritic
from metaops.rl._policies import gaussian_log_prob
from metaops.rl._replay import Transitions
from metaops.tree import stop_gradient, tree_map
from metaops.typing import Params, PyTree

__all__ = [
    "squashed_gaussian_log_prob",
    "squashed_gaussian_sample",
    "SquashedGaussianMLPPolicy",
    "TwinQCritic",
    "polyak_update",
    "sac_soft_target",
    "sac_critic_loss",
    "sac_actor_loss",
    "sac_temperature_loss",
    "sac_loss",
]

_LOG_2 = math.log(2.0)


def _log_scale_sum(scale: float | Tensor, like: Tensor) -> Tensor | float:
    if isinstance(scale, Tensor):
        return torch.log(scale.to(like.dtype)).expand(like.shape).sum(-1)
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    return like.shape[-1] * math.log(scale)


def squashed_gaussian_log_prob(
    mean: Tensor, log_std: Tensor, pre_tanh: Tensor, *, scale: float | Tensor = 1.0
) -> Tensor:
    r"""Log-density of a tanh-squashed Gaussian action, given its pre-squash value $u$.

    With $u \sim \mathcal{N}(\mu, \operatorname{diag}\sigma^2)$ and the action
    $a = c + h \odot \tanh(u)$ in the box $[c - h, c + h]$, the change of variables gives

    $$\log\pi(a) = \log\mathcal{N}(u;\mu,\sigma)
      - \sum_{i=1}^{d}\Big[\log\big(1 - \tanh^2 u_i\big) + \log h_i\Big], \qquad
      \log\big(1 - \tanh^2 u\big) = 2\big(\log 2 - u - \operatorname{softplus}(-2u)\big),$$

    where the right-hand form is exact and stays finite for large $|u|$ (where
    $1 - \tanh^2 u$ rounds to 0). Taking $u$ rather than $a$ avoids $\operatorname{atanh}$ of
    actions at the bounds. The density is in the units of $a$ (so it includes $\log h$).

    Args:
        mean: $\mu$, shape `(..., d)`.
        log_std: $\log\sigma$, shape `(..., d)`.
        pre_tanh: $u$, shape `(..., d)`.
        scale: The half-range $h > 0$ of the action box, a float or a tensor broadcastable to
            `(..., d)` (1 for actions in $[-1, 1]$).

    Returns:
        Shape `(...)`, summed over the action dimensions.

    Raises:
        TypeError: If an input is not floating point.
        ValueError: If the shapes differ or a float ``scale`` is not positive.

    Examples:
        >>> squashed_gaussian_log_prob(torch.zeros(1), torch.zeros(1), torch.zeros(1))  # tanh'(0) = 1
        tensor(-0.9189)
        >>> squashed_gaussian_log_prob(torch.zeros(1), torch.zeros(1), torch.full((1,), 30.0))  # finite
        tensor(-392.3052)
    """
    log_normal = gaussian_log_prob(mean, log_std, pre_tanh)
    log_det = (2.0 * (_LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
    return log_normal - log_det - _log_scale_sum(scale, pre_tanh)


def squashed_gaussian_sample(
    mean: Tensor,
    log_std: Tensor,
    noise: Tensor,
    *,
    center: float | Tensor = 0.0,
    scale: float | Tensor = 1.0,
) -> tuple[Tensor, Tensor]:
    r"""Reparameterised tanh-Gaussian action and its log-density, from explicit noise.

    $$u = \mu + \sigma \odot \varepsilon, \qquad a = c + h \odot \tanh(u), \qquad
      \log\pi(a) \text{ as in [metaops.rl.squashed_gaussian_log_prob][]}.$$

    Both outputs are differentiable in $\mu$ and $\log\sigma$ (the reparameterisation
    gradient). The noise $\varepsilon \sim \mathcal{N}(0, I)$ is an input, drawn outside any
    ``torch.func`` transform (``torch.randn(shape, generator=g)``), so a vmapped call and a
    Python loop over tasks see the same numbers.

    Args:
        mean: $\mu$, shape `(..., d)`.
        log_std: $\log\sigma$, shape `(..., d)`.
        noise: $\varepsilon$, shape `(..., d)`.
        center: Centre $c$ of the action box (float or tensor broadcastable to `(..., d)`).
        scale: Half-range $h > 0$ of the action box.

    Returns:
        ``(actions, log_probs)`` of shapes `(..., d)` and `(...)`.

    Raises:
        TypeError: If an input is not floating point.
        ValueError: If the shapes differ.

    Examples:
        >>> actions, log_probs = squashed_gaussian_sample(
        ...     torch.zeros(2), torch.zeros(2), torch.tensor([0.0, 100.0]), center=1.0, scale=2.0)
        >>> actions
        tensor([1., 3.])
        >>> bool(torch.isfinite(log_probs))
        True
    """
    check_float("noise", noise)
    if noise.shape != mean.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but mean has shape {tuple(mean.shape)}")
    pre_tanh = mean + torch.exp(log_std) * noise
    actions = center + scale * torch.tanh(pre_tanh)
    return actions, squashed_gaussian_log_prob(mean, log_std, pre_tanh, scale=scale)


def _bounds(action_bounds, act_dim: int) -> tuple[Tensor, Tensor]:
    low, high = (torch.as_tensor(b, dtype=torch.float32).expand(act_dim).clone() for b in action_bounds)
    if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (low < high).all()):
        raise ValueError(f"action_bounds must be finite with low < high, got {low.tolist()}, {high.tolist()}")
    return (high + low) / 2, (high - low) / 2


class SquashedGaussianMLPPolicy(nn.Module):
    r"""SAC's policy: a tanh-squashed Gaussian with state-dependent mean and standard deviation.

    An MLP trunk (activation after every hidden layer) feeds two linear heads, $\mu_\theta(s)$
    and $\log\sigma_\theta(s)$, the latter clamped to ``log_std_bounds``; actions are
    $a = c + h \odot \tanh(\mu + \sigma \odot \varepsilon)$, in the box
    ``action_bounds = (low, high)`` with $c = (\mathrm{high} + \mathrm{low})/2$ and
    $h = (\mathrm{high} - \mathrm{low})/2$ (by default $[-1, 1]^d$). ``forward(obs)`` returns
    ``(mean, log_std)``; ``sample`` and ``mode`` act on that pair and use no parameters, so
    ``torch.func.functional_call(policy, params, (obs,))`` works with per-task ``params``.

    The defaults are those of stable-baselines3's SAC: two hidden layers of 256 ReLU units and
    $\log\sigma \in [-20, 2]$.

    Args:
        obs_dim: Observation size.
        act_dim: Action size $d$.
        hidden_sizes: Hidden layer widths of the trunk (``()`` for linear heads on ``obs``).
        activation: Activation module class.
        action_bounds: Optional ``(low, high)``, floats or sequences of $d$ floats, ``low < high``.
        log_std_bounds: ``(min, max)`` of $\log\sigma$.

    Raises:
        ValueError: If the bounds are not finite with ``low < high``, or ``log_std_bounds`` is
            not increasing.

    Examples:
        >>> policy = SquashedGaussianMLPPolicy(3, 2, hidden_sizes=(8,), action_bounds=(-2.0, 2.0))
        >>> params = dict(policy.named_parameters())
        >>> dist = torch.func.functional_call(policy, params, (torch.zeros(5, 3),))
        >>> noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
        >>> actions, log_probs = policy.sample(dist, noise)
        >>> actions.shape, log_probs.shape, bool(actions.abs().max() <= 2)
        (torch.Size([5, 2]), torch.Size([5]), True)
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden_sizes: tuple[int, ...] = (256, 256),
        activation: type[nn.Module] = nn.ReLU,
        action_bounds: tuple[float | Sequence[float] | Tensor, float | Sequence[float] | Tensor] | None = None,
        log_std_bounds: tuple[float, float] = (-20.0, 2.0),
    ) -> None:
        super().__init__()
        if not log_std_bounds[0] < log_std_bounds[1]:
            raise ValueError(f"log_std_bounds must be (min, max) with min < max, got {log_std_bounds}")
        self.log_std_bounds = (float(log_std_bounds[0]), float(log_std_bounds[1]))
        sizes = (obs_dim, *hidden_sizes)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), activation()]
        self.trunk = nn.Sequential(*layers)
        self.mean_head = nn.Linear(sizes[-1], act_dim)
        self.log_std_head = nn.Linear(sizes[-1], act_dim)
        self.bounded = action_bounds is not None
        if action_bounds is not None:
            center, scale = _bounds(action_bounds, act_dim)
            # constants: non-persistent buffers follow .to()/.double() and stay out of state_dict
            self.register_buffer("action_center", center, persistent=False)
            self.register_buffer("action_scale", scale, persistent=False)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(mean, log_std)`` of the pre-squash Gaussian, both `(..., act_dim)`."""
        latent = self.trunk(obs)
        log_std = torch.clamp(self.log_std_head(latent), *self.log_std_bounds)
        return self.mean_head(latent), log_std

    def _box(self) -> tuple[float | Tensor, float | Tensor]:
        return (self.action_center, self.action_scale) if self.bounded else (0.0, 1.0)

    def sample(self, dist: tuple[Tensor, Tensor], noise: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised ``(actions, log_probs)`` from ``noise`` `(..., act_dim)`; see
        [metaops.rl.squashed_gaussian_sample][]."""
        center, scale = self._box()
        return squashed_gaussian_sample(*dist, noise, center=center, scale=scale)

    def mode(self, dist: tuple[Tensor, Tensor]) -> Tensor:
        r"""The deterministic action $c + h \odot \tanh(\mu)$ (for evaluation)."""
        center, scale = self._box()
        return center + scale * torch.tanh(dist[0])


class TwinQCritic(nn.Module):
    r"""Two independent Q-networks $Q_{\phi_1}, Q_{\phi_2}$ in one module (clipped double Q).

    ``forward(obs, actions)`` returns the tuple ``(q1, q2)``; the SAC losses take the minimum,
    which counters the overestimation of a single critic. Parameter names are ``q1.*`` and
    ``q2.*``, each a [metaops.rl.QCritic][]. The target network is not a module: it is a
    second parameter dict, ``target_params = stop_gradient(clone of params)``, moved with
    [metaops.rl.polyak_update][] and used through ``functional_call``.

    Args:
        obs_dim: Observation size.
        act_dim: Action size.
        hidden_sizes: Hidden layer widths of each network.
        activation: Activation module class.

    Examples:
        >>> critic = TwinQCritic(3, 2, hidden_sizes=(8,))
        >>> q1, q2 = critic(torch.zeros(5, 3), torch.zeros(5, 2))
        >>> q1.shape, sorted({name.split(".")[0] for name, _ in critic.named_parameters()})
        (torch.Size([5]), ['q1', 'q2'])
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden_sizes: tuple[int, ...] = (256, 256),
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.q1 = QCritic(obs_dim, act_dim, hidden_sizes=hidden_sizes, activation=activation)
        self.q2 = QCritic(obs_dim, act_dim, hidden_sizes=hidden_sizes, activation=activation)

    def forward(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(q1, q2)``, each of shape `(...)` for `(..., obs_dim)` and `(..., act_dim)`."""
        return self.q1(obs, actions), self.q2(obs, actions)


def polyak_update(target_params: PyTree, params: PyTree, *, tau: float) -> PyTree:
    r"""Moves target parameters towards the online ones: $\bar\phi \leftarrow (1-\tau)\bar\phi + \tau\phi$.

    Pure: returns a new, detached tree and leaves its inputs alone. Leaves pair by name and must
    have equal shapes; a leading task dimension needs no ``vmap`` (the update is elementwise).

    Args:
        target_params: $\bar\phi$, a parameter dict (or pytree).
        params: $\phi$, the same structure and shapes.
        tau: $\tau \in (0, 1]$; 1 copies ``params``.

    Returns:
        The new target parameters (constants: no gradient flows into them).

    Raises:
        ValueError: If ``tau`` is outside $(0, 1]$, the keys differ, or two leaves have different
            shapes or dtypes.

    Examples:
        >>> polyak_update({"w": torch.zeros(2)}, {"w": torch.tensor([1.0, -2.0])}, tau=0.25)
        {'w': tensor([ 0.2500, -0.5000])}
    """
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not 0 < tau <= 1:
        raise ValueError(f"polyak_update: tau must be a number in (0, 1], got {tau!r}")

    def mix(target: Tensor, online: Tensor) -> Tensor:
        if target.shape != online.shape:
            raise ValueError(f"polyak_update: a target leaf has shape {tuple(target.shape)} but the matching "
                             f"parameter has shape {tuple(online.shape)}")
        if target.dtype != online.dtype:
            raise ValueError(f"polyak_update: a target leaf has dtype {target.dtype} but the matching parameter has "
                             f"dtype {online.dtype}; build the target as a detached clone of the parameters")
        return torch.lerp(target.detach(), online.detach(), float(tau))  # one kernel: t + tau (o - t)

    if isinstance(target_params, dict) and isinstance(params, dict) and target_params.keys() != params.keys():
        raise ValueError(
            f"polyak_update: target_params and params have different keys: only in target "
            f"{sorted(set(target_params) - set(params))}, only in params {sorted(set(params) - set(target_params))}"
        )
    return tree_map(mix, target_params, params)


def _q_values(critic: nn.Module, params: Params, obs: Tensor, actions: Tensor) -> list[Tensor]:
    qs = functional_call(critic, params, (obs, actions))
    qs = [qs] if isinstance(qs, Tensor) else list(qs)
    for i, q in enumerate(qs):
        if q.shape != obs.shape[:-1]:
            raise ValueError(f"critic output {i} has shape {tuple(q.shape)}, expected {tuple(obs.shape[:-1])} "
                             f"for obs of shape {tuple(obs.shape)} (one Q-value per transition)")
    return qs


def _min(qs: list[Tensor]) -> Tensor:
    return qs[0] if len(qs) == 1 else torch.stack(qs).amin(0)


def _check_batch(batch: Transitions) -> None:
    for name in ("obs", "actions", "rewards", "next_obs"):
        check_float(f"batch.{name}", getattr(batch, name))
        check_finite(f"batch.{name}", getattr(batch, name))  # NaN here would reach every parameter silently
    lead = batch.rewards.shape
    for name, x in (("obs", batch.obs), ("actions", batch.actions), ("next_obs", batch.next_obs)):
        if x.shape[:-1] != lead:
            raise ValueError(f"batch.{name} has shape {tuple(x.shape)} but batch.rewards has shape {tuple(lead)}: "
                             f"expected (*{tuple(lead)}, dim)")
    if batch.terminated.shape != lead:
        raise ValueError(f"batch.terminated has shape {tuple(batch.terminated.shape)}, expected {tuple(lead)}")


def sac_soft_target(
    policy: nn.Module,
    policy_params: Params,
    critic: nn.Module,
    target_critic_params: Params,
    log_alpha: Tensor,
    batch: Transitions,
    next_noise: Tensor,
    *,
    gamma: float,
) -> Tensor:
    r"""SAC's clipped double-Q soft Bellman target (a constant).

    With $a' = c + h\tanh(\mu_\theta(s') + \sigma_\theta(s')\odot\varepsilon')$ from the
    current policy and the target critics $\bar\phi$:

    $$y = r + \gamma\,(1 - d)\Big(\min_{j} Q_{\bar\phi_j}(s', a') - \alpha \log\pi_\theta(a' \mid s')\Big),
      \qquad \alpha = e^{\log\alpha}.$$

    Everything is computed without a graph and detached: no gradient flows into $\theta$,
    $\bar\phi$ or $\log\alpha$.

    Args:
        policy: A policy whose ``forward`` gives the distribution and ``sample(dist, noise)``
            returns ``(actions, log_probs)``, e.g. [metaops.rl.SquashedGaussianMLPPolicy][].
        policy_params: $\theta$.
        critic: A critic returning a tuple of Q-values (e.g. [metaops.rl.TwinQCritic][]) or one.
        target_critic_params: $\bar\phi$.
        log_alpha: $\log\alpha$, shape `()`.
        batch: [metaops.rl.Transitions][] with shapes `(..., B, ...)`.
        next_noise: $\varepsilon'$, shape `(..., B, act_dim)`.
        gamma: Discount $\gamma \in [0, 1]$.

    Returns:
        $y$, shape `(..., B)`.

    Raises:
        TypeError: If a batch field is not floating point (``terminated`` may be bool or float).
        ValueError: If the batch shapes disagree, a batch field holds NaN or infinity, or ``gamma``
            is outside $[0, 1]$.

    Examples:
        >>> policy, critic = SquashedGaussianMLPPolicy(3, 1, hidden_sizes=(8,)), TwinQCritic(3, 1, hidden_sizes=(8,))
        >>> batch = Transitions(torch.zeros(4, 3), torch.zeros(4, 1), torch.ones(4), torch.zeros(4, 3),
        ...                     torch.ones(4, dtype=torch.bool))  # all terminal: y = r
        >>> sac_soft_target(policy, dict(policy.named_parameters()), critic, dict(critic.named_parameters()),
        ...                 torch.tensor(0.0), batch, torch.zeros(4, 1), gamma=0.99)
        tensor([1., 1., 1., 1.])
    """
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
    _check_batch(batch)
    with torch.no_grad():
        dist = functional_call(policy, policy_params, (batch.next_obs,))
        next_actions, next_log_probs = policy.sample(dist, next_noise)
        next_q = _min(_q_values(critic, target_critic_params, batch.next_obs, next_actions))
        alpha = torch.exp(log_alpha.detach())
        not_done = 1.0 - batch.terminated.to(next_q.dtype)
        target = batch.rewards + gamma * not_done * (next_q - alpha * next_log_probs)
    return target.detach()


def sac_critic_loss(critic: nn.Module, critic_params: Params, batch: Transitions, target: Tensor) -> Tensor:
    r"""SAC's critic loss: each Q-network regresses onto the soft target $y$.

    $$\mathcal{L}_Q(\phi) = \tfrac12 \sum_j \operatorname{mean}_{(s,a)}\big(Q_{\phi_j}(s, a) - y\big)^2,$$

    the form of stable-baselines3 (mean over every leading dimension of the batch). $y$ is
    treated as a constant (see [metaops.rl.sac_soft_target][]).

    Args:
        critic: A critic returning a tuple of Q-values (e.g. [metaops.rl.TwinQCritic][]) or one.
        critic_params: $\phi$.
        batch: [metaops.rl.Transitions][]; uses ``obs`` `(..., B, obs_dim)` and ``actions``.
        target: $y$, shape `(..., B)`.

    Returns:
        Scalar loss to **minimise**.

    Raises:
        ValueError: If ``target`` does not have the shape of the Q-values.

    Examples:
        >>> critic = TwinQCritic(3, 1, hidden_sizes=(8,))
        >>> params = {k: torch.zeros_like(v) for k, v in critic.named_parameters()}  # Q = 0
        >>> batch = Transitions(torch.zeros(4, 3), torch.zeros(4, 1), torch.zeros(4), torch.zeros(4, 3),
        ...                     torch.zeros(4, dtype=torch.bool))
        >>> sac_critic_loss(critic, params, batch, torch.full((4,), 2.0))  # 0.5 * (4 + 4)
        tensor(4.)
    """
    return _regression(_q_values(critic, critic_params, batch.obs, batch.actions), target)


def _regression(qs: list[Tensor], target: Tensor) -> Tensor:
    check_float("target", target)
    if target.shape != qs[0].shape:
        raise ValueError(f"target has shape {tuple(target.shape)} but the Q-values have shape {tuple(qs[0].shape)}")
    target = target.detach()
    return 0.5 * sum(((q - target) ** 2).mean() for q in qs)


def sac_actor_loss(
    policy: nn.Module,
    policy_params: Params,
    critic: nn.Module,
    critic_params: Params,
    log_alpha: Tensor,
    obs: Tensor,
    noise: Tensor,
) -> tuple[Tensor, Tensor]:
    r"""SAC's policy loss, with reparameterised actions $a_\theta(s, \varepsilon)$.

    $$\mathcal{L}_\pi(\theta) = \operatorname{mean}_s\Big[\alpha \log\pi_\theta(a_\theta \mid s)
      - \min_j Q_{\phi_j}(s, a_\theta)\Big], \qquad
      a_\theta = c + h \tanh\big(\mu_\theta(s) + \sigma_\theta(s)\odot\varepsilon\big).$$

    $\alpha = e^{\log\alpha}$ and the critic parameters $\phi$ are constants here (their
    gradient is zero), so adding this loss to the critic's and the temperature's gives each
    parameter group exactly its own gradient (see [metaops.rl.sac_loss][]).

    Args:
        policy: The policy (see [metaops.rl.sac_soft_target][]).
        policy_params: $\theta$.
        critic: The critic.
        critic_params: $\phi$ (the online critics, not the targets).
        log_alpha: $\log\alpha$, shape `()`.
        obs: $s$, shape `(..., B, obs_dim)`.
        noise: $\varepsilon$, shape `(..., B, act_dim)`.

    Returns:
        ``(loss, log_probs)``: the scalar loss to **minimise** and the detached
        $\log\pi_\theta(a_\theta\mid s)$ of shape `(..., B)`, for
        [metaops.rl.sac_temperature_loss][].

    Examples:
        >>> policy, critic = SquashedGaussianMLPPolicy(3, 1, hidden_sizes=(8,)), TwinQCritic(3, 1, hidden_sizes=(8,))
        >>> params = dict(policy.named_parameters())
        >>> loss, log_probs = sac_actor_loss(policy, params, critic, dict(critic.named_parameters()),
        ...                                  torch.tensor(0.0), torch.randn(6, 3), torch.randn(6, 1))
        >>> grads = torch.autograd.grad(loss, list(params.values()))
        >>> loss.shape, log_probs.shape, log_probs.requires_grad
        (torch.Size([]), torch.Size([6]), False)
    """
    dist = functional_call(policy, policy_params, (obs,))
    actions, log_probs = policy.sample(dist, noise)
    q = _min(_q_values(critic, stop_gradient(critic_params), obs, actions))
    alpha = torch.exp(log_alpha.detach())
    return (alpha * log_probs - q).mean(), log_probs.detach()


def sac_temperature_loss(log_alpha: Tensor, log_probs: Tensor, *, target_entropy: float) -> Tensor:
    r"""SAC's temperature loss, whose minimisation moves the policy entropy towards a target.

    $$\mathcal{L}(\log\alpha) = -\log\alpha\cdot\operatorname{mean}\big(\log\pi(a\mid s) + \bar{\mathcal H}\big),$$

    with $\log\pi$ a constant: its gradient $-(\bar{\mathcal H} - \mathcal H)$, where
    $\mathcal H = -\operatorname{mean}\log\pi$, raises $\alpha$ while the entropy is below the
    target $\bar{\mathcal H}$ and lowers it above. The usual target is
    $\bar{\mathcal H} = -\dim\mathcal A$. Differentiating $\log\alpha$ rather than $\alpha$
    (as stable-baselines3 does) keeps $\alpha > 0$ without constraints.

    Args:
        log_alpha: $\log\alpha$, shape `()`.
        log_probs: $\log\pi(a\mid s)$ of fresh policy actions, shape `(..., B)` (detached).
        target_entropy: $\bar{\mathcal H}$.

    Returns:
        Scalar loss to **minimise**.

    Examples:
        >>> log_alpha = torch.tensor(0.0, requires_grad=True)
        >>> loss = sac_temperature_loss(log_alpha, torch.tensor([-1.0, -3.0]), target_entropy=-1.0)
        >>> torch.autograd.grad(loss, log_alpha)  # entropy 2 > target -1: lower alpha
        (tensor(3.),)
    """
    check_float("log_probs", log_probs)
    if log_alpha.dim() != 0:
        raise ValueError(f"log_alpha must be a scalar (shape ()), got shape {tuple(log_alpha.shape)}")
    return -(log_alpha * (log_probs.detach() + target_entropy)).mean()


def sac_loss(
    policy: nn.Module,
    critic: nn.Module,
    params: dict[str, Params | Tensor],
    target_critic_params: Params,
    batch: Transitions,
    noise: Tensor,
    next_noise: Tensor,
    *,
    gamma: float,
    target_entropy: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""All three SAC losses in one scalar whose gradient is each group's own gradient.

    $$\mathcal{L}(\theta, \phi, \log\alpha) = \mathcal{L}_Q(\phi) + \mathcal{L}_\pi(\theta)
      + \mathcal{L}(\log\alpha),$$

    from [metaops.rl.sac_critic_loss][] (on the target of [metaops.rl.sac_soft_target][]),
    [metaops.rl.sac_actor_loss][] and [metaops.rl.sac_temperature_loss][]. The stop-gradients
    inside them make $\partial\mathcal{L}/\partial\phi = \partial\mathcal{L}_Q/\partial\phi$,
    $\partial\mathcal{L}/\partial\theta = \partial\mathcal{L}_\pi/\partial\theta$ and
    $\partial\mathcal{L}/\partial\log\alpha = \partial\mathcal{L}(\log\alpha)/\partial\log\alpha$,
    so one backward pass (or one ``torch.func.grad``) and one optimizer step update all
    three. All losses see the parameters before the step; stable-baselines3 instead updates
    the critic before it evaluates the actor loss (a one-step lag that changes little).

    **One expert per task.** With a leading task dimension on ``params``,
    ``target_critic_params``, ``batch`` and both noises, ``torch.func.vmap`` over this function
    gives per-task losses; since task $k$'s loss depends only on task $k$'s parameters, the
    gradient of their sum holds every task's own gradient, and an elementwise optimizer such as
    ``torch.optim.Adam`` over the stacked leaves is one independent Adam per task.

    Args:
        policy: The policy (e.g. [metaops.rl.SquashedGaussianMLPPolicy][]).
        critic: The critic (e.g. [metaops.rl.TwinQCritic][]).
        params: ``{"policy": theta, "critic": phi, "log_alpha": log_alpha}``.
        target_critic_params: $\bar\phi$, the target critic.
        batch: [metaops.rl.Transitions][], shapes `(..., B, ...)`.
        noise: $\varepsilon$ for the actions at ``batch.obs``, shape `(..., B, act_dim)`.
        next_noise: $\varepsilon'$ for the actions at ``batch.next_obs``, same shape.
        gamma: Discount $\gamma$.
        target_entropy: $\bar{\mathcal H}$; ``None`` uses $-\dim\mathcal A + \sum_i \log h_i$, the usual
            $-\dim\mathcal A$ of the unit box $[-1, 1]^d$ moved to the units of the actions (the
            policy's log-density includes $-\sum_i \log h_i$ for a box of half-ranges $h$, e.g.
            ``policy.action_scale``; $h = 1$ without bounds).

    Returns:
        ``(loss, aux)``: the scalar to **minimise** and detached diagnostics ``critic_loss``,
        ``actor_loss``, ``temperature_loss``, ``alpha``, ``entropy``
        ($-\operatorname{mean}\log\pi$) and ``q`` (mean online $Q$ of the batch actions).

    Raises:
        ValueError: If ``params`` lacks one of its three keys, or as the losses raise.

    Examples:
        >>> policy, critic = SquashedGaussianMLPPolicy(3, 2, hidden_sizes=(8,)), TwinQCritic(3, 2, hidden_sizes=(8,))
        >>> params = {"policy": dict(policy.named_parameters()), "critic": dict(critic.named_parameters()),
        ...           "log_alpha": torch.zeros((), requires_grad=True)}
        >>> target = {k: v.detach().clone() for k, v in params["critic"].items()}
        >>> batch = Transitions(torch.randn(16, 3), torch.rand(16, 2) * 2 - 1, torch.randn(16), torch.randn(16, 3),
        ...                     torch.zeros(16, dtype=torch.bool))
        >>> loss, aux = sac_loss(policy, critic, params, target, batch, torch.randn(16, 2), torch.randn(16, 2),
        ...                      gamma=0.99)
        >>> loss.backward()
        >>> sorted(aux)
        ['actor_loss', 'alpha', 'critic_loss', 'entropy', 'q', 'temperature_loss']
    """
    missing = {"policy", "critic", "log_alpha"} - set(params)
    if missing:
        raise ValueError(
            f"sac_loss: params must have keys 'policy', 'critic' and 'log_alpha'; missing {sorted(missing)}"
        )
    if target_entropy is None:  # SB3's -dim(A) in the unit box, moved into the units of the policy's log-density
        scale = getattr(policy, "action_scale", None)
        log_scale = 0.0 if scale is None else float(torch.log(scale).sum())
        target_entropy = -float(noise.shape[-1]) + log_scale
    log_alpha = params["log_alpha"]
    target = sac_soft_target(policy, params["policy"], critic, target_critic_params, log_alpha, batch, next_noise,
                             gamma=gamma)
    qs = _q_values(critic, params["critic"], batch.obs, batch.actions)
    critic_loss = _regression(qs, target)  # sac_critic_loss, keeping the Q-values for aux
    actor_loss, log_probs = sac_actor_loss(policy, params["policy"], critic, params["critic"], log_alpha,
                                           batch.obs, noise)
    temperature_loss = sac_temperature_loss(log_alpha, log_probs, target_entropy=target_entropy)
    aux = {
        "critic_loss": critic_loss.detach(),
        "actor_loss": actor_loss.detach(),
        "temperature_loss": temperature_loss.detach(),
        "alpha": torch.exp(log_alpha.detach()),
        "entropy": -log_probs.mean(),
        "q": torch.stack(qs).detach().mean(),
    }
    return critic_loss + actor_loss + temperature_loss, aux

