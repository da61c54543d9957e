"""Gaussian and categorical MLP policies usable functionally, their pure distribution maths,
and the size of an inner step in policy space.

A policy's ``forward`` returns distribution parameters, so
``torch.func.functional_call(policy, params, (obs,))`` works with per-task ``params`` under
``vmap``. The methods ``log_prob``, ``sample``, ``entropy``, ``kl`` and ``mode`` use no
parameters: they act on those distribution parameters and delegate to the pure functions here.

An inner policy-gradient step that is small in parameter space can be huge in policy space.
``quadratic_kl`` measures a step there (differentiably), ``kl_bounded_sgd`` bounds it, and
``check_inner_step`` warns about an implausible one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaops.estimators._validate import _is_plain, as_mask, check_float
from metaops.inner._base import InnerOptimizer
from metaops.inner._validate import check_same_keys_and_shapes
from metaops.tree import tree_axpy, tree_leaves, tree_map, tree_scale, tree_sq_dist
from metaops.typing import Params

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
    "quadratic_kl",
    "kl_bounded_sgd",
    "check_inner_step",
    "InnerStepWarning",
]

_LOG_2PI = math.log(2 * math.pi)


WEIGHT_INITS = ("torch", "xavier")
"""``weight_init`` choices of the MLP policies: PyTorch's default, or Glorot-uniform weights with zero biases."""


def mlp(in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, activation: type[nn.Module], *,
        weight_init: str = "torch") -> nn.Sequential:
    """A plain MLP: Linear, activation, ..., Linear (no output activation), initialised by ``weight_init``."""
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}")
    layers: list[nn.Module] = []
    sizes = (in_dim, *hidden_sizes)
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), activation()]
    layers.append(nn.Linear(sizes[-1], out_dim))
    if weight_init == "xavier":  # the reference code's (TF xavier_initializer, zeros_initializer)
        for layer in layers:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
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


class _GaussianHead(nn.Module):
    """The diagonal Gaussian head shared by the Gaussian policies (private).

    Subclasses build their body, then call ``_init_head`` (so that ``log_std`` comes after the
    body's parameters, as before), and map their raw mean output through ``_distribution``. See
    [metaops.rl.GaussianMLPPolicy][] for the bounded parameterisation.
    """

    def _init_head(
        self,
        act_dim: int,
        *,
        init_log_std: float,
        min_log_std: float | None,
        action_bounds: tuple[float | Sequence[float] | Tensor, float | Sequence[float] | Tensor] | None,
        normalized_bound: float,
    ) -> None:
        if min_log_std is not None and not min_log_std <= init_log_std:
            raise ValueError(f"min_log_std ({min_log_std}) must not exceed init_log_std ({init_log_std})")
        if not 0 < normalized_bound < math.inf:
            raise ValueError(f"normalized_bound must be positive and finite, got {normalized_bound}")
        self.normalized_bound = float(normalized_bound)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
        self.min_log_std = None if min_log_std is None else float(min_log_std)
        self.bounded = action_bounds is not None
        if action_bounds is not None:
            low, high = (torch.as_tensor(b, dtype=torch.float32).expand(act_dim).clone() for b in action_bounds)
            if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (low < high).all()):
                raise ValueError(f"action_bounds must be finite with low < high, got {low.tolist()}, {high.tolist()}")
            # constants, not parameters: non-persistent buffers follow .to()/.double() and stay
            # out of state_dict, so checkpoints of bounded and unbounded policies look alike
            self.register_buffer("action_center", (high + low) / 2, persistent=False)
            self.register_buffer("action_scale", (high - low) / 2, persistent=False)

    def _distribution(self, mean: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_std)`` in the units of the actions, from the body's raw mean output."""
        log_std = self.log_std if self.min_log_std is None else torch.clamp(self.log_std, min=self.min_log_std)
        if self.bounded:  # x = L tanh(f / L) in [-L, L], mapped onto the box: a = c + h x / L
            mean = self.action_center + self.action_scale * torch.tanh(mean / self.normalized_bound)
            log_std = log_std + torch.log(self.action_scale / self.normalized_bound)
        return mean, log_std.expand_as(mean)

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


class GaussianMLPPolicy(_GaussianHead):
    r"""Diagonal Gaussian MLP policy with a learned, state-independent log standard deviation.

    $\pi_\theta(a\mid s) = \mathcal{N}\big(a;\ \mu_\theta(s),\ \operatorname{diag}(\sigma^2)\big)$,
    with $\mu_\theta$ an MLP and $\log\sigma$ a parameter vector named ``log_std``.
    ``forward(obs)`` returns the distribution parameters ``(mean, log_std)``, ``log_std``
    broadcast to ``mean``'s shape; use ``torch.func.functional_call(policy, params, (obs,))``
    with your own (adapted) ``params``.

    **Bounded actions** (``action_bounds=(low, high)``, the parameterisation of the ProMP and
    MAML reference code). The policy then lives in a normalised action space
    $x \in [-L, L]^d$, $L$ = ``normalized_bound``, mapped affinely onto the box: with centre
    $c = (\mathrm{high} + \mathrm{low})/2$ and half-range $h = (\mathrm{high} - \mathrm{low})/2$,
    $a = c + h \odot x / L$. The mean is squashed into the box and the standard deviation is
    measured in normalised units,

    $$\mu_x(s) = L \tanh\big(f_\theta(s) / L\big), \qquad \sigma_x = e^{\log\sigma}, \qquad
      \mu(s) = c + h \odot \tanh\big(f_\theta(s)/L\big), \qquad \sigma = h \odot e^{\log\sigma} / L .$$

    With the default $L = 10$, ``init_log_std=0`` and ``weight_init="xavier"`` this is the
    reference code's policy (it samples in $[-10, 10]$ with initial $\sigma = 1$ and rescales to
    the bounds): the initial
    standard deviation is a tenth of the half-range, the squashing is the identity near 0, and
    the score $\nabla_{f}\log\pi$ and the KL of a change of $f$ do not depend on the width of
    the box. Without bounds the mean is the raw MLP output and $\sigma = e^{\log\sigma}$ in the
    units of the actions: with actions clipped to a narrow box, an unbounded mean and a wide
    $\sigma$, one policy-gradient step can move the mean far outside the box.

    **Initialisation.** ``weight_init="torch"`` keeps PyTorch's ``nn.Linear`` default
    ($\mathcal{U}(\pm 1/\sqrt{n_\text{in}})$ for weights and biases); ``"xavier"`` draws
    Glorot-uniform weights $\mathcal{U}(\pm\sqrt{6/(n_\text{in} + n_\text{out})})$ and zero biases,
    as the ProMP and rllab reference code does. For a 64-64 tanh network this makes the initial
    mean function several times larger and more state-dependent; on HalfCheetahDir it let ProMP
    leave its zero-return plateau several times sooner (``benchmarks/RESULTS.md``).

    **Floor.** With ``min_log_std`` the policy uses $\max(\log\sigma, \log\sigma_{\min})$ (no
    gradient below the floor), which keeps the score $\nabla_\mu \log\pi \propto 1/\sigma$ and the
    KL of a step in the mean from exploding as $\sigma$ shrinks.

    Args:
        obs_dim: Observation size.
        act_dim: Action size $d$.
        hidden_sizes: Hidden layer widths.
        activation: Activation module class.
        init_log_std: Initial $\log\sigma$ (in normalised units with ``action_bounds``).
        min_log_std: Optional floor of $\log\sigma$ (in normalised units with ``action_bounds``).
        action_bounds: Optional ``(low, high)``, each a float or a sequence of $d$ floats with
            ``low < high``: squash the mean into the box and work in the normalised space.
        normalized_bound: $L$, the bound of the normalised action space.
        weight_init: ``"torch"`` (default) or ``"xavier"`` (the reference code's), see above.

    Raises:
        ValueError: If the bounds are not finite with ``low < high`` and shape ``(d,)`` or
            scalar, ``normalized_bound`` is not positive, ``min_log_std > init_log_std``, or
            ``weight_init`` is not a known name.

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

        Bounded actions in $[-0.1, 0.1]^2$, initial $\sigma$ a tenth of the half-range:

        >>> bounded = GaussianMLPPolicy(3, 2, hidden_sizes=(8,), min_log_std=math.log(0.1),
        ...                             action_bounds=(-0.1, 0.1))
        >>> mean, log_std = bounded(1e4 * torch.randn(50, 3))
        >>> bool(mean.abs().max() <= 0.1), log_std.exp()[0]
        (True, tensor([0.0100, 0.0100], grad_fn=<SelectBackward0>))

        The reference code's initialisation (zero biases, Glorot-uniform weights):

        >>> reference = GaussianMLPPolicy(3, 2, hidden_sizes=(8,), weight_init="xavier")
        >>> first = reference.mean_net[0]  # 3 -> 8: bound sqrt(6 / 11) = 0.74
        >>> bool((first.bias == 0).all()), bool(first.weight.abs().max() <= 0.74)
        (True, True)
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        hidden_sizes: tuple[int, ...] = (100, 100),
        activation: type[nn.Module] = nn.Tanh,
        init_log_std: float = 0.0,
        min_log_std: float | None = None,
        action_bounds: tuple[float | Sequence[float] | Tensor, float | Sequence[float] | Tensor] | None = None,
        normalized_bound: float = 10.0,
        weight_init: str = "torch",
    ) -> None:
        super().__init__()
        self.mean_net = mlp(obs_dim, tuple(hidden_sizes), act_dim, activation, weight_init=weight_init)
        self._init_head(act_dim, init_log_std=init_log_std, min_log_std=min_log_std, action_bounds=action_bounds,
                        normalized_bound=normalized_bound)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(mean, log_std)``, both of shape `(..., act_dim)`, in the units of the actions."""
        return self._distribution(self.mean_net(obs))


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


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of per-step ``values`` `(..., T)` over the real steps."""
    mask = as_mask(mask, "per-step values", values)
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    values = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return (values * weights).sum() / weights.sum()


def quadratic_kl(
    policy: nn.Module, params: Params, direction: Params, observations: Tensor, *, mask: Tensor | None = None
) -> Tensor:
    r"""Quadratic (Fisher) estimate of the mean KL of a parameter step $\delta$ in policy space.

    $$\overline{\mathrm{KL}}\big(\pi_\theta \,\|\, \pi_{\theta+\delta}\big)
      = \tfrac12\,\delta^\top F(\theta)\,\delta + O(\lVert\delta\rVert^3), \qquad
      \tfrac12\,\delta^\top F\delta = \frac{1}{N}\sum_{t} m_t\, \tfrac12\,
      \frac{d^2}{d\varepsilon^2}\mathrm{KL}\big(\pi_\theta(\cdot\mid s_t)\,\big\|\,
      \pi_\theta(\cdot\mid s_t) + \varepsilon\,J_t\delta\big)\Big|_{\varepsilon=0},$$

    with $F$ the Fisher information of the action distributions averaged over the real steps
    and $J_t\delta$ the change of the distribution parameters at $s_t$ to first order (one
    forward-mode product through the policy, ``torch.func.jvp``; the second derivative comes
    from ``policy.kl`` on the distribution parameters, so any policy with a ``kl`` method
    works). For the Gaussian policy it is
    $\sum_i \big[(J\delta)_{\mu_i}^2 / (2\sigma_i^2) + (J\delta)_{\log\sigma_i}^2\big]$ per step.
    Pure and differentiable in ``params`` and ``direction`` (e.g. through an inner gradient),
    so it works under ``vmap`` and inside a differentiated inner step.

    Args:
        policy: A policy module such as [metaops.rl.GaussianMLPPolicy][].
        params: Parameters $\theta$ at which the step starts.
        direction: The step $\delta$, a pytree with the structure of ``params``.
        observations: States, shape `(..., T, obs_dim)`.
        mask: Optional padding mask `(..., T)`, 1 for real steps.

    Returns:
        A non-negative scalar, the estimated mean KL over the real steps.

    Examples:
        >>> policy = GaussianMLPPolicy(2, 1, hidden_sizes=(4,))
        >>> params = {k: v.detach() for k, v in policy.named_parameters()}
        >>> step = {k: torch.zeros_like(v) for k, v in params.items()}
        >>> step["log_std"] = torch.tensor([0.1])  # sigma x e^0.1: KL ~ 0.1^2 per state
        >>> quadratic_kl(policy, params, step, torch.randn(5, 2))
        tensor(0.0100)
    """
    dist, tangent = torch.func.jvp(lambda p: functional_call(policy, p, (observations,)), (params,), (direction,))
    leaf = tree_leaves(tangent)[0]
    origin = torch.zeros((), dtype=leaf.dtype, device=leaf.device)
    unit = torch.ones_like(origin)

    def kl_along(eps: Tensor) -> Tensor:  # KL(pi || pi moved by eps along the tangent), per step
        return policy.kl(dist, tree_map(lambda d, t: d + eps * t, dist, tangent))

    slope = lambda eps: torch.func.jvp(kl_along, (eps,), (unit,))[1]
    curvature = torch.func.jvp(slope, (origin,), (unit,))[1]  # d^2/d eps^2 at 0, (..., T)
    return 0.5 * _masked_mean(curvature, mask)


def kl_bounded_sgd(
    policy: nn.Module,
    observations: Tensor,
    *,
    lr: float | Mapping[str, Tensor],
    max_kl: float,
    mask: Tensor | None = None,
) -> InnerOptimizer:
    r"""SGD whose step is shrunk, differentiably, until its estimated mean KL is at most ``max_kl``.

    The plain step $\delta = -\alpha\, g$ (or the Meta-SGD step $\delta = -\alpha \odot g$ with
    learned per-parameter rates, see [metaops.inner.meta_sgd][]) is scaled by a factor computed
    in closed form from the quadratic KL estimate on the support states
    ([metaops.rl.quadratic_kl][]):

    $$\phi = \theta + s\,\delta, \qquad
      s = \min\!\Big(1,\ \sqrt{\epsilon \,/\, \tfrac12\,\delta^\top F(\theta)\,\delta}\Big),$$

    so $\tfrac12 (s\delta)^\top F (s\delta) \le \epsilon$: steps already inside the bound are plain
    SGD steps, larger ones are cut back to the bound (a trust region for the inner step). No
    line search and no branch on values: it works under ``vmap`` and every mode of
    [metaops.inner.adapt][], and meta-gradients flow through $s$ (as a function of $\theta$ and
    of the inner gradient). The bound is on the *estimate*; the exact KL of a step that moves
    $\log\sigma$ or a saturated ``tanh`` far can differ from it.

    Build it inside the differentiated function, per task, since it holds that task's support
    observations.

    Args:
        policy: The policy module (its ``forward`` gives the distribution parameters).
        observations: The task's support states, shape `(..., T, obs_dim)`.
        lr: Step size $\alpha > 0$, or Meta-SGD rates: a dict keyed by parameter name of scalar or
            parameter-shaped tensors (any sign; they receive meta-gradients through the step and
            through $s$ when built inside the differentiated function).
        max_kl: The bound $\epsilon > 0$ on the estimated mean KL of one step.
        mask: Optional padding mask `(..., T)`, 1 for real steps.

    Returns:
        An [metaops.inner.InnerOptimizer][].

    Raises:
        ValueError: If ``max_kl`` or a float ``lr`` is not a positive finite number, or (at
            ``init``) the names or shapes of dict rates do not match the parameters.
        TypeError: If ``lr`` is a dict whose values are not tensors.

    Examples:
        >>> from metaops.inner import adapt
        >>> policy = GaussianMLPPolicy(2, 1, hidden_sizes=(4,))
        >>> params = {k: v.detach() for k, v in policy.named_parameters()}
        >>> obs, actions = torch.randn(8, 2), torch.randn(8, 1)
        >>> loss_fn = lambda p, b: -policy.log_prob(torch.func.functional_call(policy, p, (b,)), actions).mean()
        >>> adapted = adapt(loss_fn, params, obs, kl_bounded_sgd(policy, obs, lr=10.0, max_kl=0.01), steps=1)
        >>> step = {k: adapted[k] - params[k] for k in params}
        >>> float(quadratic_kl(policy, params, step, obs)) <= 0.01 + 1e-6
        True
    """
    rates = isinstance(lr, Mapping)
    if rates and not all(isinstance(v, Tensor) for v in lr.values()):
        raise TypeError("kl_bounded_sgd: lr must be a number or a dict mapping parameter names to tensors")
    numbers = {"max_kl": max_kl} if rates else {"lr": lr, "max_kl": max_kl}  # learned rates may have any sign
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ValueError(f"kl_bounded_sgd: {name} must be a positive finite number, got {value!r}")

    def init(params: Params) -> tuple:
        if rates:
            check_same_keys_and_shapes(params, lr, "kl_bounded_sgd lr", scalar_ok=True)
        return ()

    def step(params: Params, grads: Params, state: tuple, hyperparams: dict) -> tuple[Params, tuple]:
        if rates:  # the learned rates live in hyperparams, so that every mode of adapt differentiates them
            direction = tree_map(lambda g, a: -a * g, grads, hyperparams["lrs"])
        else:
            direction = tree_scale(grads, -lr)
        kl = quadratic_kl(policy, params, direction, observations, mask=mask)
        scale = torch.sqrt(max_kl / torch.clamp(kl, min=max_kl))  # 1 inside the bound; no 0/0 at kl = 0
        return tree_axpy(scale, direction, params), state

    return InnerOptimizer(init=init, step=step, hyperparams={"lrs": dict(lr)} if rates else {},
                          name=f"kl_bounded_sgd(lr={'<per-parameter rates>' if rates else lr}, max_kl={max_kl})")


class InnerStepWarning(UserWarning):
    """Warned by [metaops.rl.check_inner_step][] when an inner step moves the policy implausibly far.

    Turn it into an error with ``warnings.filterwarnings("error", category=InnerStepWarning)``.
    """


def _step_stats(policy: nn.Module, params: Params, adapted: Params, observations: Tensor,
                mask: Tensor | None) -> dict[str, Tensor]:
    """Per-task statistics of one step (pure; vmapped over tasks by check_inner_step)."""
    dist_p = functional_call(policy, params, (observations,))
    dist_q = functional_call(policy, adapted, (observations,))
    kl = policy.kl(dist_p, dist_q)  # (..., T)
    bool_mask = as_mask(mask, "kl per step", kl)
    real = torch.ones_like(kl, dtype=torch.bool) if bool_mask is None else bool_mask
    stats = {
        "kl": _masked_mean(kl, mask),
        "kl_max": torch.where(real, kl, torch.zeros_like(kl)).amax(),
        "step_norm": torch.sqrt(tree_sq_dist({k: adapted[k] for k in params}, params)),
    }
    if isinstance(dist_p, tuple) and len(dist_p) == 2:  # (mean, log_std): a Gaussian policy
        change = (dist_q[1] - dist_p[1]).abs().amax(-1)  # (..., T)
        stats["log_std_change"] = torch.where(real, change, torch.zeros_like(change)).amax()
    return stats


def check_inner_step(
    policy: nn.Module,
    params: Params,
    adapted: Params,
    observations: Tensor,
    *,
    mask: Tensor | None = None,
    max_kl: float = 1.0,
    max_log_std_change: float = 1.0,
) -> dict[str, Tensor]:
    r"""Measures an inner step in policy space and warns when it is implausibly large.

    Returns, per task, the mean and the largest KL between the policies before and after the
    step on the support states, $\overline{\mathrm{KL}}(\pi_\theta \,\|\, \pi_\phi)$ and
    $\max_t \mathrm{KL}_t$, the parameter step norm $\lVert\phi - \theta\rVert_2$ and, for a
    Gaussian policy (distribution ``(mean, log_std)``), the largest change of $\log\sigma$.
    It warns ([metaops.rl.InnerStepWarning][]) when the mean KL exceeds ``max_kl``, $\log\sigma$
    moves by more than ``max_log_std_change`` or a statistic is not finite. Such a step has
    left the region where the policy gradient describes it: the post-update policy can be far
    worse than the pre-update one, and meta-gradients through the step explode. Lower the inner
    learning rate, normalise the advantages (or scale the rewards), or bound the step with
    [metaops.rl.kl_bounded_sgd][].

    Call it outside ``torch.func`` transforms, on detached values (it reads them). Task
    batches are recognised by shape: ``adapted`` (and optionally ``params``) may carry a
    leading task dimension, with ``observations`` and ``mask`` shaped `(task, ..., T, ...)`.

    Args:
        policy: The policy module.
        params: Parameters before the step (shared, or one set per task).
        adapted: Parameters after the step (same keys; shared or one set per task).
        observations: Support states, shape `(..., T, obs_dim)`, or `(task, ..., T, obs_dim)`.
        mask: Optional padding mask `(..., T)`, 1 for real steps.
        max_kl: Warn above this mean KL per state (nats). The default, one nat, is a hundred
            times the trust regions of TRPO and ProMP: the policy after such a step is a
            different policy, not a corrected one.
        max_log_std_change: Warn when some $\log\sigma$ moves by more than this (the default
            is a factor $e$ in $\sigma$).

    Returns:
        ``{"kl", "kl_max", "step_norm"}`` and, for Gaussian policies, ``"log_std_change"``:
        detached tensors of shape `()` or `(task,)`.

    Raises:
        ValueError: If the parameter shapes fit neither a single task nor a task batch.

    Examples:
        >>> import warnings
        >>> policy = GaussianMLPPolicy(2, 1, hidden_sizes=(4,))
        >>> params = {k: v.detach() for k, v in policy.named_parameters()}
        >>> adapted = dict(params, log_std=params["log_std"] + 23.0)  # a runaway step
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     stats = check_inner_step(policy, params, adapted, torch.randn(5, 2))
        >>> stats["log_std_change"], caught[0].category.__name__
        (tensor(23.), 'InnerStepWarning')
    """
    reference = dict(policy.named_parameters())

    def batched(tree: Params, name: str) -> bool:
        extra = {tree[k].dim() - reference[k].dim() for k in tree}
        if extra == {0} or extra == {1}:
            return extra == {1}
        raise ValueError(f"check_inner_step: {name} must hold one set of parameters or one per task "
                         f"(a leading task dimension on every leaf), got shapes "
                         f"{ {k: tuple(v.shape) for k, v in tree.items()} }")

    with torch.no_grad():
        params, adapted = tree_map(torch.Tensor.detach, params), tree_map(torch.Tensor.detach, adapted)
        if batched(adapted, "adapted") or batched(params, "params"):
            in_dims = (0 if batched(params, "params") else None, 0 if batched(adapted, "adapted") else None, 0,
                       None if mask is None else 0)
            stats = torch.func.vmap(lambda p, q, o, m: _step_stats(policy, p, q, o, m), in_dims=in_dims)(
                params, adapted, observations, mask)
        else:
            stats = _step_stats(policy, params, adapted, observations, mask)
    if not _is_plain(stats["kl"]):
        return stats  # inside a transform no value can be read
    bad = ~(stats["kl"] <= max_kl)  # NaN is bad too
    if "log_std_change" in stats:
        bad = bad | ~(stats["log_std_change"] <= max_log_std_change)
    if bool(bad.any()):
        tasks = bad.reshape(-1).nonzero().reshape(-1).tolist()
        where = f" for task(s) {tasks[:10]}" if bad.dim() else ""
        worst = lambda x: float(x.reshape(-1)[tasks].max()) if bad.dim() else float(x)
        detail = f"mean KL {worst(stats['kl']):.3g} per state (> {max_kl})"
        if "log_std_change" in stats:
            detail += f", log-std moved by {worst(stats['log_std_change']):.3g} (> {max_log_std_change})"
        warnings.warn(
            f"implausible inner step{where}: {detail}, parameter step norm {worst(stats['step_norm']):.3g}. "
            "The policy moved far outside the region where the policy gradient describes the step: lower "
            "the inner learning rate, normalise the advantages or scale the rewards, or bound the step with "
            "metaops.rl.kl_bounded_sgd.",
            InnerStepWarning,
            stacklevel=2,
        )
    return stats
