"""PPO-clip and ProMP's outer objective."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad

from metaops.estimators import lvc_objective, ppo_clip_objective, promp_objective

D = torch.float64


def test_ppo_clip_by_hand():
    old = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=D))
    new = torch.log(torch.tensor([0.9, 0.1, 0.9, 0.1], dtype=D))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=D)
    # ratios 1.8, 0.2, 1.8, 0.2 -> min(r A, clip(r) A): 1.2, 0.2, -1.8, -0.8
    out = ppo_clip_objective(new, old, adv, clip=0.2)
    torch.testing.assert_close(out, torch.tensor(1.2 + 0.2 - 1.8 - 0.8, dtype=D))


def test_ppo_gradient_at_old_params_equals_likelihood_ratio_and_vanishes_when_clipped():
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(3, 5, generator=g, dtype=D)
    adv = torch.randn(3, 5, generator=g, dtype=D)
    lp = lambda th: th - 0.1 * th**2 - 3.0  # log-probs with slope in [0.1, 2] on the range
    old = lp(theta).detach()
    ppo = lambda th: ppo_clip_objective(lp(th), old, adv, clip=0.1).sum()
    lr = lambda th: lvc_objective(lp(th), adv, sampling_log_probs=old).sum()
    torch.testing.assert_close(grad(ppo)(theta), grad(lr)(theta))
    far = theta + 1.0 * adv.sign()  # ratios pushed beyond the clip in the improving direction
    assert torch.all(grad(ppo)(far) == 0)


def test_ppo_masks_and_bad_input():
    lp = torch.zeros(2, 3, dtype=D)
    adv = torch.tensor([[1.0, 2.0, torch.nan], [1.0, 1.0, 1.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(ppo_clip_objective(lp, lp, adv, mask=mask), torch.tensor([3.0, 3.0], dtype=D))
    with pytest.raises(ValueError, match="clip"):
        ppo_clip_objective(lp, lp, adv, clip=0.0, mask=mask)
    with pytest.raises(ValueError, match="non-finite"):
        ppo_clip_objective(lp, lp, adv)
    with pytest.raises(ValueError, match="old_log_probs has shape"):
        ppo_clip_objective(lp, lp[:, :2], adv, mask=mask)


def test_promp_objective_is_clipped_surrogate_minus_kl_penalty():
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(4, generator=g, dtype=D)
    old_lp = torch.log_softmax(torch.zeros(4, dtype=D), 0)
    adv = torch.randn(4, generator=g, dtype=D)

    def objective(th):
        lp = torch.log_softmax(th, 0)
        kl = (old_lp.exp() * (old_lp - lp)).sum()  # KL(pre-update old || current)
        return promp_objective(lp, old_lp, adv, kl=kl, kl_coeff=0.5, clip=0.2)

    def by_hand(th):
        lp = torch.log_softmax(th, 0)
        kl = (old_lp.exp() * (old_lp - lp)).sum()
        return ppo_clip_objective(lp, old_lp, adv, clip=0.2) - 0.5 * kl

    torch.testing.assert_close(objective(theta), by_hand(theta))
    torch.testing.assert_close(grad(objective)(theta), grad(by_hand)(theta))
    # the penalty pulls towards the old policy: at a point with zero advantages, ascent
    # on the objective reduces the KL
    zero_adv = lambda th: promp_objective(
        torch.log_softmax(th, 0),
        old_lp,
        torch.zeros(4, dtype=D),
        kl=(old_lp.exp() * (old_lp - torch.log_softmax(th, 0))).sum(),
        kl_coeff=1.0,
    )
    stepped = theta + 0.1 * grad(zero_adv)(theta)
    assert zero_adv(stepped) > zero_adv(theta)


def test_ppo_and_promp_vmap_of_grad_equals_loop():
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(3, 4, 5, generator=g, dtype=D)
    old = torch.randn(3, 4, 5, generator=g, dtype=D) * 0.1 - 1.0
    adv = torch.randn(3, 4, 5, generator=g, dtype=D)
    mask = torch.rand(3, 4, 5, generator=g) > 0.2

    def per_task(th, o, a, m):
        lp = th - 1.0
        kl = ((th - o - 1.0) ** 2 * m).sum() / m.sum()
        clip = ppo_clip_objective(lp, o, a, clip=0.2, mask=m).mean()
        return clip + promp_objective(lp, o, a, kl=kl, kl_coeff=0.3, mask=m).mean()

    batched = torch.func.vmap(grad(per_task))(theta, old, adv, mask)
    looped = torch.stack([grad(per_task)(theta[i], old[i], adv[i], mask[i]) for i in range(3)])
    torch.testing.assert_close(batched, looped)
