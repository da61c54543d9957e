"""A recurrent (GRU) Gaussian policy for RL², and unrolling a recurrent policy over a sequence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metaops.rl._policies import _GaussianHead
from metaops.tree import tree_map
from metaops.typing import Params

__all__ = ["GaussianGRUPolicy", "unroll"]


class GaussianGRUPolicy(_GaussianHead):
    r"""Diagonal Gaussian policy on a GRU: the recurrent policy of RL² (Duan et al., 2016).

    One step maps the inputs $x_t$ and the carry $h_t$ (the GRU's hidden state) to

    $$\begin{aligned}
      r &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_t + b_{hr}), \qquad
      z = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_t + b_{hz}),\\
      n &= \tanh\big(W_{in} x_t + b_{in} + r \odot (W_{hn} h_t + b_{hn})\big), \qquad
      h_{t+1} = (1 - z) \odot n + z \odot h_t,\\
      \pi_\theta(a_t \mid x_{\le t}) &= \mathcal{N}\big(a_t;\ \mu = W_\mu h_{t+1} + b_\mu,\
      \operatorname{diag}(\sigma^2)\big),
    \end{aligned}$$

    the update of ``torch.nn.GRUCell`` (whose parameters it holds, as ``gru.weight_ih``,
    ``gru.weight_hh``, ``gru.bias_ih``, ``gru.bias_hh``, with GRUCell's initialisation), written
    with ``F.linear`` so that it takes any batch shape and has a batching rule under ``vmap``
    (the fused ``gru_cell`` kernel has none). $\log\sigma$ is a state-independent parameter
    ``log_std``; ``action_bounds``, ``min_log_std`` and ``normalized_bound`` squash the mean into
    the action box exactly as in [metaops.rl.GaussianMLPPolicy][].

    It satisfies [metaops.envs.RecurrentPolicy][]: ``initial_carry(batch_shape)`` is zeros of
    shape `(*batch_shape, hidden_size)` and ``forward(inputs, carry)`` returns
    ``((mean, log_std), new_carry)``. For RL² the inputs are those built by
    [metaops.envs.sample_trials][], so ``input_dim = obs_dim + act_dim + 2``.

    Args:
        input_dim: Size of the inputs $x_t$.
        act_dim: Action size.
        hidden_size: GRU width (the carry size).
        init_log_std: Initial $\log\sigma$ (in normalised units with ``action_bounds``).
        min_log_std: Optional floor of $\log\sigma$.
        action_bounds: Optional ``(low, high)``: squash the mean into the box.
        normalized_bound: $L$, the bound of the normalised action space.

    Raises:
        ValueError: For sizes that are not positive, bad bounds, or ``min_log_std > init_log_std``.

    Examples:
        >>> policy = GaussianGRUPolicy(6, 2, hidden_size=8, action_bounds=(-0.1, 0.1))
        >>> carry = policy.initial_carry((4, 3))  # e.g. (task, trial)
        >>> dist, carry = policy(torch.zeros(4, 3, 6), carry)
        >>> actions = policy.sample(dist, generator=torch.Generator().manual_seed(0))
        >>> policy.log_prob(dist, actions).shape, carry.shape
        (torch.Size([4, 3]), torch.Size([4, 3, 8]))
        >>> cell = policy.gru  # the same update as torch.nn.GRUCell
        >>> x, h = torch.randn(5, 6), torch.randn(5, 8)
        >>> torch.allclose(policy(x, h)[1], cell(x, h), atol=1e-6)
        True

    References:
        Duan et al., "RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", 2016.
    """

    def __init__(
        self,
        input_dim: int,
        act_dim: int,
        *,
        hidden_size: int = 64,
        init_log_std: float = 0.0,
        min_log_std: float | None = None,
        action_bounds: tuple[float | Sequence[float] | Tensor, float | Sequence[float] | Tensor] | None = None,
        normalized_bound: float = 10.0,
    ) -> None:
        super().__init__()
        for name, value in (("input_dim", input_dim), ("act_dim", act_dim), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GaussianGRUPolicy: {name} must be a positive int, got {value!r}")
        self.input_dim, self.act_dim, self.hidden_size = input_dim, act_dim, hidden_size
        self.gru = nn.GRUCell(input_dim, hidden_size)
        self.mean = nn.Linear(hidden_size, act_dim)
        self._init_head(act_dim, init_log_std=init_log_std, min_log_std=min_log_std, action_bounds=action_bounds,
                        normalized_bound=normalized_bound)

    def initial_carry(self, batch_shape: Sequence[int], *, dtype: torch.dtype = torch.float32) -> Tensor:
        """Zeros of shape `(*batch_shape, hidden_size)`: the GRU state at the start of a trial."""
        return torch.zeros((*batch_shape, self.hidden_size), dtype=dtype, device=self.log_std.device)

    def forward(self, inputs: Tensor, carry: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """One step: ``((mean, log_std), new_carry)`` for inputs `(..., input_dim)` and carry `(..., hidden)`."""
        if inputs.shape[-1] != self.input_dim or carry.shape[-1] != self.hidden_size:
            raise ValueError(
                f"GaussianGRUPolicy: expected inputs (..., {self.input_dim}) and carry (..., {self.hidden_size}), "
                f"got {tuple(inputs.shape)} and {tuple(carry.shape)} (RL² inputs: obs_dim + act_dim + 2)"
            )
        gates_x = F.linear(inputs, self.gru.weight_ih, self.gru.bias_ih)
        gates_h = F.linear(carry, self.gru.weight_hh, self.gru.bias_hh)
        x_r, x_z, x_n = gates_x.chunk(3, dim=-1)
        h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        new_carry = (1 - z) * n + z * carry
        return self._distribution(self.mean(new_carry)), new_carry


def unroll(policy: nn.Module, params: Params, inputs: Tensor, *, carry: Any = None) -> tuple[Any, Any]:
    r"""Runs a recurrent policy over a whole sequence: the distributions at every step, and the last carry.

    $$h_0 = \text{carry or } \texttt{policy.initial\_carry}, \qquad
      (\text{dist}_t,\ h_{t+1}) = f_\theta(x_t, h_t), \quad t = 0, \dots, T-1,$$

    with $f_\theta$ = ``functional_call(policy, params, (x_t, h_t))``. This recomputes the
    action distributions of a trial under new parameters, e.g. the log-probabilities of PPO's
    ratio: ``policy.log_prob(unroll(policy, params, batch.inputs)[0], batch.actions)``. A Python
    loop over time with a static trip count: differentiable (backpropagation through time),
    and it works under ``vmap`` over tasks. Steps after the end of a right-padded sequence do
    not change the earlier ones (the recursion is causal), so padding needs no mask here.

    Args:
        policy: A [metaops.envs.RecurrentPolicy][] such as [metaops.rl.GaussianGRUPolicy][].
        params: Its parameters (e.g. ``dict(policy.named_parameters())``).
        inputs: $x_t$, shape `(..., T, input_dim)`.
        carry: The carry at step 0, leaves `(..., ...)`; ``policy.initial_carry(inputs.shape[:-2],
            dtype=inputs.dtype)`` when omitted.

    Returns:
        ``(dist, carry)``: the distribution parameters with time inserted after the batch
        dimensions (e.g. ``(mean, log_std)`` of shape `(..., T, act_dim)`), and $h_T$.

    Raises:
        ValueError: If ``inputs`` has fewer than two dimensions or no time steps.

    Examples:
        >>> policy = GaussianGRUPolicy(3, 1, hidden_size=4)
        >>> params = dict(policy.named_parameters())
        >>> inputs = torch.randn(2, 5, 3)  # 2 sequences of 5 steps
        >>> (mean, log_std), last = unroll(policy, params, inputs)
        >>> mean.shape, last.shape
        (torch.Size([2, 5, 1]), torch.Size([2, 4]))
        >>> step_by_step, h = [], policy.initial_carry((2,))  # the same as stepping by hand
        >>> for t in range(5):
        ...     (m, _), h = policy(inputs[:, t], h)
        ...     step_by_step.append(m)
        >>> torch.allclose(torch.stack(step_by_step, 1), mean)
        True
    """
    if inputs.dim() < 2 or inputs.shape[-2] < 1:
        raise ValueError(f"unroll: inputs must have shape (..., T, input_dim) with T >= 1, got {tuple(inputs.shape)}")
    batch_shape = tuple(inputs.shape[:-2])
    if carry is None:
        carry = policy.initial_carry(batch_shape, dtype=inputs.dtype)
    dists = []
    for t in range(inputs.shape[-2]):
        dist, carry = functional_call(policy, params, (inputs[..., t, :], carry))
        dists.append(dist)
    time_dim = len(batch_shape)
    return tree_map(lambda *steps: torch.stack(steps, dim=time_dim), *dists), carry
