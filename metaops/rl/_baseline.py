"""The linear feature baseline of rllab / garage / ProMP, batched over tasks."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from metaops.estimators._validate import apply_mask, check_float, check_rollout

__all__ = [
    "linear_baseline_features",
    "fit_linear_baseline",
    "predict_linear_baseline",
    "LinearFeatureBaseline",
    "linear_baseline_advantages",
]


def linear_baseline_features(observations: Tensor) -> Tensor:
    r"""Builds the features $[\,o,\ o^2,\ \tau,\ \tau^2,\ \tau^3,\ 1\,]$ of each step.

    $o = \operatorname{clip}(s_t, -10, 10)$ and $\tau = t / 100$ with $t$ the step index within
    the episode (the position along the time axis), as in rllab's ``LinearFeatureBaseline``.

    Args:
        observations: Shape `(..., T, obs_dim)`, one episode per row starting at index 0
            (right padding: a row may end early, never restart; put separate episodes in
            separate rows).

    Returns:
        Features of shape `(..., T, 2 * obs_dim + 4)`.

    Raises:
        TypeError: If ``observations`` is not floating point.
        ValueError: If it has fewer than two dimensions.

    Examples:
        >>> features = linear_baseline_features(torch.tensor([[20.0], [-1.0]], dtype=torch.float64))
        >>> features[0].tolist()  # clipped obs, its square, t, t^2, t^3, 1 at step 0
        [10.0, 100.0, 0.0, 0.0, 0.0, 1.0]
        >>> [round(x, 8) for x in features[1].tolist()]  # step 1: t = 0.01
        [-1.0, 1.0, 0.01, 0.0001, 1e-06, 1.0]
    """
    check_float("observations", observations)
    if observations.dim() < 2:
        raise ValueError(f"observations must have shape (..., T, obs_dim), got {tuple(observations.shape)}")
    o = observations.clamp(-10.0, 10.0)
    t = torch.arange(o.shape[-2], dtype=o.dtype, device=o.device) / 100.0
    t = t.unsqueeze(-1).expand(*o.shape[:-1], 1)
    return torch.cat([o, o**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(
    observations: Tensor,
    returns: Tensor,
    *,
    mask: Tensor | None = None,
    reg: float = 1e-5,
) -> Tensor:
    r"""Fits the linear feature baseline by ridge-regularised least squares, per task.

    For the features $\Phi$ of [metaops.rl.linear_baseline_features][] over all real steps of
    all episodes of a task, solves

    $$w = (\Phi^\top \Phi + \rho I)^{-1} \Phi^\top G .$$

    The features, $\Phi^\top \Phi$ and the solve are always computed in float64, whatever the
    input dtype, as in rllab: the time polynomial $\tau, \tau^2, \tau^3$ next to observations
    of magnitude ~10 makes $\Phi^\top \Phi$ so badly conditioned that a float32 fit can
    explain less of the returns than a constant. With $\rho > 0$ the system is positive
    definite, so the solution is finite (no retry with a larger $\rho$ is needed). Padded steps
    are excluded. The fit is outside the graph (inputs are detached) and it vmaps.

    Args:
        observations: Shape `(..., E, T, obs_dim)`: per task (leading dims), $E$ episodes.
        returns: Discounted returns $G_t$ to regress, shape `(..., E, T)`.
        mask: Optional padding mask `(..., E, T)`, 1 for real steps and 0 for padding.
            Right padding: each row is one trajectory, `1...1 0...0` (it may end early, never
            restart); put separate episodes in separate rows. Step $t$ of a row gets the time
            features of $t$.
        reg: Ridge coefficient $\rho > 0$.

    Returns:
        Coefficients $w$, shape `(..., 2 * obs_dim + 4)`, in the dtype of ``observations``.

    Raises:
        TypeError: If a tensor is not floating point, or the dtypes differ.
        ValueError: If the shapes do not match, ``reg`` is not positive, the mask is all zeros,
            or (eagerly) a mask row has a 0 followed by a 1, or returns or observations are
            non-finite at real steps.

    Examples:
        >>> obs = torch.linspace(-1, 1, 8).reshape(2, 4, 1)  # 2 episodes of 4 steps
        >>> returns = 3.0 * obs[..., 0] + 1.0
        >>> w = fit_linear_baseline(obs, returns)
        >>> w.dtype
        torch.float32
        >>> torch.allclose(predict_linear_baseline(w, obs), returns, atol=1e-3)
        True
    """
    check_float("observations", observations)
    if observations.dim() < 3 or observations.shape[:-1] != returns.shape:
        raise ValueError(
            "observations must have shape (..., E, T, obs_dim) matching returns (..., E, T); "
            f"got {tuple(observations.shape)} and {tuple(returns.shape)}"
        )
    bool_mask = check_rollout("returns", returns, mask=mask, finite=("returns",), right_padded=True)
    if observations.dtype != returns.dtype:
        raise TypeError(f"observations has dtype {observations.dtype} but returns has dtype {returns.dtype}")
    if not isinstance(reg, (int, float)) or reg <= 0:
        raise ValueError(f"reg must be a positive float, got {reg!r}")
    obs = observations.detach().to(torch.float64)
    targets = returns.detach().to(torch.float64)
    if bool_mask is not None:
        obs = torch.where(bool_mask.unsqueeze(-1), obs, torch.zeros((), dtype=obs.dtype))
    weights = 1.0 if bool_mask is None else bool_mask.to(obs.dtype).unsqueeze(-1)
    features = linear_baseline_features(obs) * weights  # padded rows are zero
    targets = apply_mask(targets, bool_mask)
    features = features.flatten(-3, -2)  # (..., E*T, F)
    targets = targets.flatten(-2, -1)  # (..., E*T)
    gram = features.mT @ features  # (..., F, F)
    rhs = features.mT @ targets.unsqueeze(-1)  # (..., F, 1)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    coeffs = torch.linalg.solve(gram + reg * eye, rhs).squeeze(-1)  # (..., F)
    return coeffs.to(observations.dtype)


def predict_linear_baseline(coeffs: Tensor, observations: Tensor) -> Tensor:
    r"""Evaluates the fitted linear feature baseline: $b_t = \phi(s_t, t)^\top w$.

    Args:
        coeffs: $w$ from [metaops.rl.fit_linear_baseline][], shape `(..., 2 * obs_dim + 4)`.
        observations: Shape `(..., E, T, obs_dim)`, with the same leading (task) dims.

    Returns:
        Baseline values, shape `(..., E, T)`.

    Raises:
        ValueError: If the feature size of ``coeffs`` does not match ``observations``.

    Examples:
        >>> coeffs = torch.zeros(6)
        >>> predict_linear_baseline(coeffs, torch.ones(2, 3, 1)).shape
        torch.Size([2, 3])
    """
    check_float("coeffs", coeffs)
    features = linear_baseline_features(observations)
    if coeffs.shape[-1] != features.shape[-1]:
        raise ValueError(
            f"coeffs has {coeffs.shape[-1]} features but observations of size "
            f"{observations.shape[-1]} give {features.shape[-1]} (2 * obs_dim + 4)"
        )
    return torch.einsum("...etf,...f->...et", features, coeffs.to(features.dtype))


class LinearFeatureBaseline(NamedTuple):
    r"""A fitted linear feature baseline: an immutable holder of its coefficients.

    ``LinearFeatureBaseline.fit(...)`` returns a new baseline; calling it on observations gives
    the values. See [metaops.rl.fit_linear_baseline][] for the features and the fit.

    Examples:
        >>> obs = torch.randn(3, 5, 2)
        >>> returns = torch.randn(3, 5)
        >>> baseline = LinearFeatureBaseline.fit(obs, returns)
        >>> baseline(obs).shape
        torch.Size([3, 5])
    """

    coeffs: Tensor
    """Coefficients $w$, shape `(..., 2 * obs_dim + 4)`."""

    @classmethod
    def fit(
        cls,
        observations: Tensor,
        returns: Tensor,
        *,
        mask: Tensor | None = None,
        reg: float = 1e-5,
    ) -> LinearFeatureBaseline:
        """Fits to ``returns`` (..., E, T); see [metaops.rl.fit_linear_baseline][].

        Examples:
            >>> LinearFeatureBaseline.fit(torch.randn(2, 3, 1), torch.randn(2, 3)).coeffs.shape
            torch.Size([6])
        """
        return cls(fit_linear_baseline(observations, returns, mask=mask, reg=reg))

    def __call__(self, observations: Tensor) -> Tensor:
        """Returns the baseline values, shape `(..., E, T)`."""
        return predict_linear_baseline(self.coeffs, observations)


def linear_baseline_advantages(
    observations: Tensor,
    rewards: Tensor,
    *,
    mask: Tensor,
    gamma: float,
    gae_lambda: float,
    normalize: bool = True,
) -> Tensor:
    r"""Advantages of policy-gradient meta-RL: GAE on a linear feature baseline fitted per task.

    The pipeline of the MAML and ProMP reference code, in one call: discounted returns
    ([metaops.rl.discounted_returns][]), the linear feature baseline fitted to them per task in
    float64 ([metaops.rl.fit_linear_baseline][]), GAE with that baseline ([metaops.rl.gae][]),
    and (by default) normalisation per task over its episodes and steps
    ([metaops.rl.normalize_advantages][]):

    $$\hat A_t = \frac{A^{\mathrm{GAE}(\gamma,\lambda)}_t - \mu}{\sigma}, \qquad
      A^{\mathrm{GAE}}_t = \sum_{l \ge 0} (\gamma\lambda)^l \big(r_{t+l} + \gamma b_{t+l+1} - b_{t+l}\big),$$

    with $\mu, \sigma$ the mean and standard deviation over one task's real steps.

    Args:
        observations: `(task, episode, time, obs_dim)`.
        rewards: `(task, episode, time)`.
        mask: `(task, episode, time)`, 1 for real steps and 0 for right padding.
        gamma: Discount $\gamma$.
        gae_lambda: GAE $\lambda$ (1: discounted returns minus the baseline).
        normalize: Normalise per task.

    Returns:
        Advantages `(task, episode, time)` in the dtype of ``rewards``, 0 on padding.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> obs, rewards = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, generator=g)
        >>> adv = linear_baseline_advantages(obs, rewards, mask=torch.ones(2, 3, 5), gamma=0.99, gae_lambda=1.0)
        >>> adv.shape, bool(adv.mean((1, 2)).abs().max() < 1e-5)  # normalised per task
        (torch.Size([2, 3, 5]), True)
    """
    from metaops.rl._returns import discounted_returns, gae, normalize_advantages

    returns = discounted_returns(rewards.double(), gamma=gamma, mask=mask)
    coeffs = fit_linear_baseline(observations.double(), returns, mask=mask)  # (task, features)
    values = predict_linear_baseline(coeffs, observations.double()).to(rewards.dtype)
    advantages = gae(rewards, values, gamma=gamma, gae_lambda=gae_lambda, mask=mask)
    if normalize:
        advantages = normalize_advantages(advantages, mask=mask, dim=(-2, -1))
    return advantages
