r"""PEARL's probabilistic context encoder: a product of per-transition Gaussians over a latent $z$.

Each transition $c_n = (s_n, a_n, r_n[, s'_n])$ of a task's context gives a Gaussian factor
$\Psi_\phi(z \mid c_n) = \mathcal{N}(\mu_n, \operatorname{diag}\sigma_n^2)$; the posterior is
their normalised product, a Gaussian whose precision is the sum of the factors' precisions.
Because the product is permutation invariant, the context is a set, not a sequence. The
information bottleneck pulls the posterior towards the unit prior with
$\mathrm{KL}(q(z\mid c)\,\|\,\mathcal N(0, I))$. Pure functions, batch dimensions leading, so
``torch.func.vmap`` over a task dimension gives one posterior per task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaops.estimators._validate import check_float

__all__ = ["product_of_gaussians", "kl_to_standard_normal", "ContextEncoder"]


def product_of_gaussians(
    means: Tensor,
    variances: Tensor,
    *,
    mask: Tensor | None = None,
    min_variance: float = 1e-7,
    prior_precision: float = 0.0,
) -> tuple[Tensor, Tensor]:
    r"""The normalised product of $N$ diagonal Gaussian factors, along dimension ``-2``.

    $$\sigma^{-2} = \lambda_0 + \sum_{n=1}^{N} m_n\, \tilde\sigma_n^{-2}, \qquad
      \mu = \sigma^{2} \sum_{n=1}^{N} m_n\, \tilde\sigma_n^{-2}\, \mu_n, \qquad
      \tilde\sigma_n^2 = \max(\sigma_n^2, \sigma^2_{\min}),$$

    elementwise over the latent dimensions, where $m_n \in \{0, 1\}$ is the mask (padding
    factors count for nothing) and $\lambda_0$ the precision of an optional zero-mean prior
    factor $\mathcal{N}(0, \lambda_0^{-1})$ ($\lambda_0 = 1$ includes the unit prior, so an
    empty context gives the prior exactly). The floor $\sigma^2_{\min}$ keeps the precisions
    finite (PEARL's reference code uses $10^{-7}$). This is sequential Bayesian updating of a
    Gaussian belief with Gaussian likelihoods, in one step.

    Args:
        means: $\mu_n$, shape `(..., N, d)`.
        variances: $\sigma_n^2 \ge 0$, shape `(..., N, d)`.
        mask: Optional `(..., N)`, 1 (or ``True``) for real factors, 0 for padding.
        min_variance: $\sigma^2_{\min} > 0$.
        prior_precision: $\lambda_0 \ge 0$. With $\lambda_0 = 0$ every row needs at least one
            real factor (otherwise its variance is infinite).

    Returns:
        ``(mean, variance)`` of the product, each of shape `(..., d)`.

    Raises:
        TypeError: If ``means`` or ``variances`` is not floating point.
        ValueError: If the shapes disagree or a hyperparameter is out of range.

    Examples:
        >>> mean, variance = product_of_gaussians(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [1.0]]))
        >>> mean, variance  # two unit-variance factors at 0 and 2
        (tensor([1.]), tensor([0.5000]))
        >>> product_of_gaussians(torch.tensor([[0.0], [2.0]]), torch.ones(2, 1), mask=torch.tensor([1, 0]))
        (tensor([0.]), tensor([1.]))
    """
    check_float("means", means)
    check_float("variances", variances)
    if means.shape != variances.shape or means.dim() < 2:
        raise ValueError(f"means and variances must have the same shape (..., N, d), got {tuple(means.shape)} "
                         f"and {tuple(variances.shape)}")
    if not min_variance > 0:
        raise ValueError(f"min_variance must be positive, got {min_variance!r}")
    if not prior_precision >= 0:
        raise ValueError(f"prior_precision must be >= 0, got {prior_precision!r}")
    precisions = 1.0 / torch.clamp(variances, min=min_variance)
    if mask is not None:
        if mask.shape != means.shape[:-1]:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(means.shape[:-1])} "
                             f"(the shape of means without its last dimension)")
        precisions = precisions * mask.to(precisions.dtype).unsqueeze(-1)
    precision = precisions.sum(-2) + prior_precision
    variance = 1.0 / precision
    return variance * (precisions * means).sum(-2), variance


def kl_to_standard_normal(mean: Tensor, variance: Tensor) -> Tensor:
    r"""KL divergence of a diagonal Gaussian to the unit prior, summed over the last dimension.

    $$\mathrm{KL}\big(\mathcal N(\mu, \operatorname{diag}\sigma^2)\,\|\,\mathcal N(0, I)\big)
      = \tfrac12 \sum_{i=1}^{d} \big(\sigma_i^2 + \mu_i^2 - 1 - \log\sigma_i^2\big).$$

    Args:
        mean: $\mu$, shape `(..., d)`.
        variance: $\sigma^2 > 0$, shape `(..., d)`.

    Returns:
        Shape `(...)`.

    Raises:
        TypeError: If an input is not floating point.
        ValueError: If the shapes differ.

    Examples:
        >>> kl_to_standard_normal(torch.zeros(3), torch.ones(3))
        tensor(0.)
        >>> kl_to_standard_normal(torch.tensor([1.0]), torch.tensor([1.0]))
        tensor(0.5000)
    """
    check_float("mean", mean)
    check_float("variance", variance)
    if mean.shape != variance.shape:
        raise ValueError(f"mean has shape {tuple(mean.shape)} but variance has shape {tuple(variance.shape)}")
    return 0.5 * (variance + mean**2 - 1.0 - torch.log(variance)).sum(-1)


class ContextEncoder(nn.Module):
    r"""PEARL's inference network $q_\phi(z \mid c)$: an MLP per transition, then a product of Gaussians.

    The MLP maps each context transition, a vector $c_n$ of size ``context_dim`` (e.g.
    $[s, a, r]$), to $(\mu_n, \operatorname{softplus}(\cdot) = \sigma_n^2)$, and ``forward``
    returns the posterior ``(mean, variance)`` of [metaops.rl.product_of_gaussians][] over the
    transitions, so ``torch.func.functional_call(encoder, params, (context,))`` is the
    posterior under any ``params``, and ``vmap`` over tasks gives one posterior per task.

    The defaults are those of the reference code: three hidden layers of 200 ReLU units.

    Args:
        context_dim: Size of one context transition.
        latent_dim: Size $d$ of $z$.
        hidden_sizes: Hidden layer widths.
        activation: Activation module class.
        min_variance: Floor of each factor's variance.
        prior_precision: Precision of a zero-mean prior factor in the product (0: none, as in
            the reference code; 1: the unit prior, so an empty context gives the prior).

    Examples:
        >>> encoder = ContextEncoder(4, 2, hidden_sizes=(8,))
        >>> mean, variance = encoder(torch.zeros(3, 10, 4))  # 3 tasks, 10 transitions each
        >>> mean.shape, variance.shape
        (torch.Size([3, 2]), torch.Size([3, 2]))
        >>> mean, variance = encoder(torch.zeros(10, 4), mask=torch.zeros(10))  # no real transition
        >>> encoder_with_prior = ContextEncoder(4, 2, hidden_sizes=(8,), prior_precision=1.0)
        >>> encoder_with_prior(torch.zeros(10, 4), mask=torch.zeros(10))  # the prior
        (tensor([0., 0.], grad_fn=<MulBackward0>), tensor([1., 1.], grad_fn=<MulBackward0>))
    """

    def __init__(
        self,
        context_dim: int,
        latent_dim: int,
        *,
        hidden_sizes: tuple[int, ...] = (200, 200, 200),
        activation: type[nn.Module] = nn.ReLU,
        min_variance: float = 1e-7,
        prior_precision: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = (context_dim, *hidden_sizes)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), activation()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], 2 * latent_dim))
        self.latent_dim = latent_dim
        self.min_variance = float(min_variance)
        self.prior_precision = float(prior_precision)

    def factors(self, context: Tensor) -> tuple[Tensor, Tensor]:
        r"""Per-transition $(\mu_n, \sigma_n^2)$, each `(..., N, latent_dim)`, for context `(..., N, context_dim)`."""
        out = self.net(context)
        return out[..., : self.latent_dim], F.softplus(out[..., self.latent_dim :])

    def forward(self, context: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior ``(mean, variance)``, each `(..., latent_dim)`, for context `(..., N, context_dim)`."""
        means, variances = self.factors(context)
        return product_of_gaussians(means, variances, mask=mask, min_variance=self.min_variance,
                                    prior_precision=self.prior_precision)
