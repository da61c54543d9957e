"""An enumerable tiny MDP: every trajectory, its probability and its tensors, in float64.

Two states, two actions, a tabular softmax policy (4 parameters) and a horizon of 3. After each
action the episode terminates with a state-action dependent probability, so episodes have
different lengths and are right-padded (with finite garbage that masks must remove).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

S, A = 2, 2
DTYPE = torch.float64


@dataclass(frozen=True)
class TinyMDP:
    states: Tensor  # (N, H) long, padded with 1
    actions: Tensor  # (N, H) long, padded with 1
    rewards: Tensor  # (N, H) float64, padded with 7.0 (garbage)
    mask: Tensor  # (N, H) bool
    env_prob: Tensor  # (N,) probability of the trajectory's environment outcomes
    gamma: float
    values: Tensor  # (N, H) exact V(s_t) at time t for the sampling policy at theta0 (0 padded)
    theta0: Tensor  # (S * A,) a generic policy parameter

    @property
    def horizon(self) -> int:
        return self.states.shape[1]

    def log_probs(self, theta: Tensor) -> Tensor:
        """(N, H) log-probabilities of the recorded actions (padding: finite garbage)."""
        table = torch.log_softmax(theta.reshape(S, A), dim=-1)
        return table[self.states, self.actions]

    def log_probs_under(self, thetas: Tensor) -> Tensor:
        """(..., N, H) log-probabilities of all trajectories under each of ``thetas`` (..., P)."""
        table = torch.log_softmax(thetas.reshape(*thetas.shape[:-1], S, A), dim=-1)
        return table[..., self.states, self.actions]

    def probs_under(self, thetas: Tensor) -> Tensor:
        """(..., N) trajectory probabilities under each of ``thetas`` (..., P)."""
        lp = torch.where(self.mask, self.log_probs_under(thetas), torch.zeros((), dtype=DTYPE))
        return self.env_prob * lp.sum(-1).exp()

    def probs(self, theta: Tensor) -> Tensor:
        """(N,) trajectory probabilities under theta (differentiable)."""
        lp = torch.where(self.mask, self.log_probs(theta), torch.zeros((), dtype=DTYPE))
        return self.env_prob * lp.sum(-1).exp()

    def discounted(self) -> Tensor:
        """(N, H) gamma^t r_t with padding zeroed."""
        t = torch.arange(self.horizon, dtype=DTYPE)
        return torch.where(self.mask, self.rewards, 0.0) * self.gamma**t

    def returns(self) -> Tensor:
        """(N,) discounted return of each trajectory."""
        return self.discounted().sum(-1)

    def reward_to_go(self) -> Tensor:
        """(N, H) R_t = sum_{t' >= t} gamma^t' r_t' (discounted from 0), zero on padding."""
        r = self.discounted()
        return torch.where(self.mask, r.flip(-1).cumsum(-1).flip(-1), 0.0)

    def exact_return(self, theta: Tensor) -> Tensor:
        """Scalar expected discounted return J(theta), exact."""
        return (self.probs(theta) * self.returns()).sum()

    def expect(self, per_trajectory, theta: Tensor) -> Tensor:
        """sum_n stop_grad(p_n(theta)) * per_trajectory(theta)[n]: the estimator's expectation."""
        return (self.probs(theta).detach() * per_trajectory(theta)).sum()


def make_mdp(seed: int = 0, horizon: int = 3, gamma: float = 0.9) -> TinyMDP:
    g = torch.Generator().manual_seed(seed)
    p0 = torch.softmax(torch.randn(S, generator=g, dtype=DTYPE), 0)
    trans = torch.softmax(2 * torch.randn(S, A, S, generator=g, dtype=DTYPE), -1)
    term = torch.rand(S, A, generator=g, dtype=DTYPE) * 0.5
    reward = torch.randn(S, A, generator=g, dtype=DTYPE) + 1.0
    theta0 = torch.randn(S * A, generator=g, dtype=DTYPE)

    rows = []  # (states, actions, env_prob)

    def expand(states, actions, prob):
        t = len(actions)
        s = states[-1]
        for a in range(A):
            if t + 1 == horizon:
                rows.append((states, actions + [a], prob))
                continue
            rows.append((states, actions + [a], prob * term[s, a]))
            for s2 in range(S):
                expand(states + [s2], actions + [a], prob * (1 - term[s, a]) * trans[s, a, s2])

    for s0 in range(S):
        expand([s0], [], p0[s0])

    n = len(rows)
    states = torch.ones(n, horizon, dtype=torch.long)
    actions = torch.ones(n, horizon, dtype=torch.long)
    rewards = torch.full((n, horizon), 7.0, dtype=DTYPE)
    mask = torch.zeros(n, horizon, dtype=torch.bool)
    env_prob = torch.zeros(n, dtype=DTYPE)
    for i, (ss, aa, p) in enumerate(rows):
        k = len(aa)
        states[i, :k] = torch.tensor(ss)
        actions[i, :k] = torch.tensor(aa)
        rewards[i, :k] = reward[states[i, :k], actions[i, :k]]
        mask[i, :k] = True
        env_prob[i] = p

    # Exact state values V_t(s) under theta0 by backward dynamic programming (undiscounted
    # from t, i.e. the expected sum_{t' >= t} gamma^(t'-t) r_t' given s_t = s).
    pi = torch.softmax(theta0.reshape(S, A), -1)
    v_next = torch.zeros(S, dtype=DTYPE)
    v_table = torch.zeros(horizon, S, dtype=DTYPE)
    for t in reversed(range(horizon)):
        cont = (1 - term)[..., None] * trans  # (S, A, S)
        q = reward + (gamma * (cont * v_next).sum(-1) if t + 1 < horizon else 0.0)
        v_table[t] = (pi * q).sum(-1)
        v_next = v_table[t]
    t_idx = torch.arange(horizon).expand(n, horizon)
    values = torch.where(mask, v_table[t_idx, states], 0.0)

    mdp = TinyMDP(states, actions, rewards, mask, env_prob, gamma, values, theta0)
    total = mdp.probs(theta0).sum()
    assert torch.allclose(total, torch.ones((), dtype=DTYPE)), total
    return mdp


def hessian_terms(mdp: TinyMDP, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ProMP's exact (H1, H2, H12) at theta, computed independently from per-step derivatives."""
    grad_lp = torch.func.jacrev(mdp.log_probs)(theta)  # (N, H, P)
    hess_lp = torch.func.jacrev(torch.func.jacrev(mdp.log_probs))(theta)  # (N, H, P, P)
    rtg = mdp.reward_to_go()  # (N, H), zero on padding
    p = mdp.probs(theta).detach()
    h1 = torch.einsum("n,nt,nti,ntj->ij", p, rtg, grad_lp, grad_lp)
    h2 = torch.einsum("n,nt,ntij->ij", p, rtg, hess_lp)
    later = torch.triu(torch.ones(mdp.horizon, mdp.horizon, dtype=DTYPE), diagonal=1)  # t < t'
    h12 = torch.einsum("n,tu,nti,nuj,nu->ij", p, later, grad_lp, grad_lp, rtg)
    return h1, h2, h12
