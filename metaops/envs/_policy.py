"""The policy protocols of the samplers: stateless (MLP) policies and recurrent ones with a carry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Policy", "RecurrentPolicy"]


@runtime_checkable
class Policy(Protocol):
    r"""A stateless policy: observations in, distribution parameters out, no state between steps.

    This is what [metaops.envs.sample_episodes][] drives (it calls ``forward``, ``sample`` and
    ``log_prob``; the learners call ``kl`` and ``entropy``). ``forward`` uses the module's
    parameters, so ``torch.func.functional_call(policy, params, (obs,))`` evaluates it with any
    (adapted, per-task) ``params``; the other methods use no parameters, they act on the
    distribution parameters ``dist`` (any pytree of tensors, e.g. ``(mean, log_std)``) that
    ``forward`` returned:

    * ``forward(obs) -> dist`` for observations of shape `(..., obs_dim)`;
    * ``sample(dist, *, generator=None) -> actions`` of shape `(..., act_dim)`, detached;
    * ``log_prob(dist, actions) -> log_probs`` $\log\pi(a\mid s)$ of shape `(...)`;
    * ``kl(dist_p, dist_q) -> kl`` $\mathrm{KL}(p\,\|\,q)$ of shape `(...)`;
    * ``entropy(dist) -> entropy`` of shape `(...)`.

    [metaops.rl.GaussianMLPPolicy][] and [metaops.rl.CategoricalMLPPolicy][] satisfy it. The
    check ``isinstance(policy, Policy)`` looks for the method names only (``typing`` cannot check
    signatures at run time); a recurrent policy has them too: tell the two apart with
    [metaops.envs.RecurrentPolicy][] (which also needs ``initial_carry``).

    Examples:
        >>> from metaops.rl import GaussianMLPPolicy
        >>> isinstance(GaussianMLPPolicy(2, 2, hidden_sizes=(8,)), Policy)
        True
        >>> isinstance(GaussianMLPPolicy(2, 2, hidden_sizes=(8,)), RecurrentPolicy)  # no carry
        False
    """

    def forward(self, obs: Tensor) -> Any:
        """Distribution parameters for observations `(..., obs_dim)`."""
        ...

    def sample(self, dist: Any, *, generator: torch.Generator | None = None) -> Tensor:
        """Detached actions `(..., act_dim)`; call outside ``torch.func`` transforms."""
        ...

    def log_prob(self, dist: Any, actions: Tensor) -> Tensor:
        """$\\log\\pi(a \\mid \\cdot)$, shape `(...)` (summed over action dimensions)."""
        ...

    def kl(self, dist_p: Any, dist_q: Any) -> Tensor:
        """$\\mathrm{KL}(p\\,\\|\\,q)$, shape `(...)`."""
        ...

    def entropy(self, dist: Any) -> Tensor:
        """Entropy, shape `(...)`."""
        ...


@runtime_checkable
class RecurrentPolicy(Protocol):
    r"""A recurrent policy: each step maps (inputs, carry) to (distribution parameters, new carry).

    The carry $h$ is the policy's memory (a GRU's hidden state, any pytree of tensors with the
    batch shape leading). [metaops.envs.sample_trials][] drives it, one step at a time:

    $$(\text{dist}_t,\ h_{t+1}) = f_\theta(x_t,\ h_t), \qquad h_0 = \text{initial\_carry},$$

    * ``initial_carry(batch_shape, *, dtype=torch.float32) -> carry``: the state at the start
      of a trial, every leaf shaped `(*batch_shape, ...)` (it holds no parameters: zeros for a
      GRU, so it is the same under ``functional_call`` with any ``params``);
    * ``forward(inputs, carry) -> (dist, new_carry)``: one step for inputs `(..., input_dim)`
      and a carry with the same leading batch shape `(...)`. ``forward`` holds every parameter,
      so ``torch.func.functional_call(policy, params, (inputs, carry))`` runs it with any
      ``params`` (and under ``vmap`` over tasks);
    * ``sample``, ``log_prob``, ``kl``, ``entropy``: as for [metaops.envs.Policy][], on ``dist``.

    Stateless policies keep their one-argument ``forward`` and pay nothing for this protocol:
    [metaops.envs.sample_episodes][] never creates a carry. [metaops.rl.GaussianGRUPolicy][]
    satisfies it; [metaops.rl.unroll][] runs one over a whole sequence (to recompute the
    log-probabilities of a trial under new parameters).

    Examples:
        >>> import torch
        >>> from metaops.rl import GaussianGRUPolicy
        >>> policy = GaussianGRUPolicy(6, 2, hidden_size=8)
        >>> isinstance(policy, RecurrentPolicy)
        True
        >>> carry = policy.initial_carry((3,))
        >>> (mean, log_std), carry = policy(torch.zeros(3, 6), carry)
        >>> mean.shape, carry.shape
        (torch.Size([3, 2]), torch.Size([3, 8]))
    """

    def initial_carry(self, batch_shape: Sequence[int], *, dtype: torch.dtype = torch.float32) -> Any:
        """The carry at the start of a trial, leaves shaped `(*batch_shape, ...)`."""
        ...

    def forward(self, inputs: Tensor, carry: Any) -> tuple[Any, Any]:
        """One step: ``(dist, new_carry)`` for inputs `(..., input_dim)`."""
        ...

    def sample(self, dist: Any, *, generator: torch.Generator | None = None) -> Tensor:
        """Detached actions `(..., act_dim)`; call outside ``torch.func`` transforms."""
        ...

    def log_prob(self, dist: Any, actions: Tensor) -> Tensor:
        """$\\log\\pi(a \\mid \\cdot)$, shape `(...)` (summed over action dimensions)."""
        ...

    def kl(self, dist_p: Any, dist_q: Any) -> Tensor:
        """$\\mathrm{KL}(p\\,\\|\\,q)$, shape `(...)`."""
        ...

    def entropy(self, dist: Any) -> Tensor:
        """Entropy, shape `(...)`."""
        ...
