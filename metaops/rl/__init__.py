"""RL building blocks for meta-gradients: returns, baselines, policies, critics, KL, TRPO, PPO, SAC and
PEARL's context encoder.

Rollout tensors are shaped ``(..., T)`` with time last (observations ``(..., T, obs_dim)``), and
``mask`` is 1 on real steps and 0 on padding. The meta-gradient estimators themselves live in
``metaops.estimators``.
"""

from metaops.rl._baseline import (
    LinearFeatureBaseline,
    fit_linear_baseline,
    linear_baseline_advantages,
    linear_baseline_features,
    predict_linear_baseline,
)
from metaops.rl._context import ContextEncoder, kl_to_standard_normal, product_of_gaussians
from metaops.rl._critics import QCritic, ValueCritic
from metaops.rl._kl import kl_hvp, mean_kl
from metaops.rl._policies import (
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    InnerStepWarning,
    categorical_entropy,
    categorical_kl,
    categorical_log_prob,
    categorical_sample,
    check_inner_step,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    gaussian_sample,
    kl_bounded_sgd,
    quadratic_kl,
)
from metaops.rl._recurrent import GaussianGRUPolicy, unroll
from metaops.rl._replay import ReplayBuffer, Transitions
from metaops.rl._returns import discounted_returns, gae, normalize_advantages
from metaops.rl._sac import (
    SquashedGaussianMLPPolicy,
    TwinQCritic,
    polyak_update,
    sac_actor_loss,
    sac_critic_loss,
    sac_loss,
    sac_soft_target,
    sac_temperature_loss,
    squashed_gaussian_log_prob,
    squashed_gaussian_sample,
)
from metaops.rl._trpo import TRPOInfo, trpo_step

__all__ = [
    # returns and advantages
    "discounted_returns",
    "gae",
    "normalize_advantages",
    # linear feature baseline
    "linear_baseline_features",
    "fit_linear_baseline",
    "linear_baseline_advantages",
    "predict_linear_baseline",
    "LinearFeatureBaseline",
    # policies and distributions
    "GaussianMLPPolicy",
    "CategoricalMLPPolicy",
    "gaussian_log_prob",
    "gaussian_kl",
    "gaussian_entropy",
    "gaussian_sample",
    "categorical_log_prob",
    "categorical_kl",
    "categorical_entropy",
    "categorical_sample",
    # recurrent policies (RL²)
    "GaussianGRUPolicy",
    "unroll",
    # the size of an inner step in policy space
    "quadratic_kl",
    "kl_bounded_sgd",
    "check_inner_step",
    "InnerStepWarning",
    # critics
    "ValueCritic",
    "QCritic",
    # KL, trust regions, clipped objectives
    "mean_kl",
    "kl_hvp",
    "trpo_step",
    "TRPOInfo",
    # off-policy actor-critic (SAC)
    "SquashedGaussianMLPPolicy",
    "squashed_gaussian_log_prob",
    "squashed_gaussian_sample",
    "TwinQCritic",
    "polyak_update",
    "sac_soft_target",
    "sac_critic_loss",
    "sac_actor_loss",
    "sac_temperature_loss",
    "sac_loss",
    "Transitions",
    "ReplayBuffer",
    # probabilistic context encoder (PEARL)
    "product_of_gaussians",
    "kl_to_standard_normal",
    "ContextEncoder",
]
