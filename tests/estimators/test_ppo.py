"""PPO-clip and ProMP's outer objective."""

from __future__ import annotations

import math

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


def _promp_by_loops(theta, old_logits, actions, adv, mask, kl_coeff, clip):
    """ProMP's objective written out with Python floats: explicit ratio, clipping branch and KL sum."""
    total = 0.0
    for t in range(len(actions)):
        if not mask[t]:
            continue
        z_new = sum(math.exp(x) for x in theta[t])
        z_old = sum(math.exp(x) for x in old_logits[t])
        ratio = (math.exp(theta[t][actions[t]]) / z_new) / (math.exp(old_logits[t][actions[t]]) / z_old)
        clipped = min(max(ratio, 1 - clip), 1 + clip)
        total += min(ratio * adv[t], clipped * adv[t])
    kl, n = 0.0, 0
    for t in range(len(actions)):  # KL(old || new) per state, averaged over the real steps
        if not mask[t]:
            continue
        z_new = sum(math.exp(x) for x in theta[t])
        z_old = sum(math.exp(x) for x in old_logits[t])
        kl += sum((math.exp(o) / z_old) * (o - math.log(z_old) - x + math.log(z_new))
                  for o, x in zip(old_logits[t], theta[t]))
        n += 1
    return total - kl_coeff * kl / n


def _promp_setup(seed=1, steps=6, actions=3):
    g = torch.Generator().manual_seed(seed)
    old_logits = torch.randn(steps, actions, generator=g, dtype=D)
    theta = old_logits + 0.4 * torch.randn(steps, actions, generator=g, dtype=D)  # some ratios clipped
    acts = torch.randint(actions, (steps,), generator=g)
    adv = torch.randn(steps, generator=g, dtype=D)
    mask = torch.tensor([1, 1, 1, 1, 1, 0], dtype=torch.bool)
    return theta, old_logits, acts, adv, mask


def _promp_of(theta, old_logits, acts, adv, mask, kl_coeff=0.7, clip=0.2):
    lp = torch.log_softmax(theta, -1).gather(-1, acts[:, None])[:, 0]
    old_lp = torch.log_softmax(old_logits, -1).gather(-1, acts[:, None])[:, 0]
    old_p = torch.softmax(old_logits, -1)
    per_state = (old_p * (torch.log_softmax(old_logits, -1) - torch.log_softmax(theta, -1))).sum(-1)
    kl = per_state[mask].mean()
    return promp_objective(lp, old_lp, adv, kl=kl, kl_coeff=kl_coeff, clip=clip, mask=mask)


def test_promp_objective_matches_a_loop_written_from_the_paper():
    theta, old_logits, acts, adv, mask = _promp_setup()
    ratios = (torch.log_softmax(theta, -1) - torch.log_softmax(old_logits, -1)).gather(-1, acts[:, None]).exp()
    assert ((ratios[:5] - 1).abs() > 0.2).any() and ((ratios[:5] - 1).abs() < 0.2).any()  # both branches used
    expected = _promp_by_loops(theta.tolist(), old_logits.tolist(), acts.tolist(), adv.tolist(), mask.tolist(),
                               kl_coeff=0.7, clip=0.2)
    torch.testing.assert_close(_promp_of(theta, old_logits, acts, adv, mask).item(), expected, rtol=1e-12, atol=1e-12)


def test_promp_objective_first_and_second_derivatives_through_an_inner_step():
    """gradcheck and gradgradcheck (float64, finite differences) of the objective of adapted logits
    theta' = theta + alpha * grad J(theta), J the importance-weighted LVC objective of the recipe's
    inner step (its sampling log-probs are constants, so J is an ordinary function of theta and
    finite differences see every derivative; the magic-box form's derivatives are estimators)."""
    theta, old_logits, acts, adv, mask = _promp_setup(seed=3)
    pre_acts, pre_adv = torch.randint(3, (6,), generator=torch.Generator().manual_seed(4)), adv.flip(0)
    pre_lp = lambda t: torch.log_softmax(t, -1).gather(-1, pre_acts[:, None])[:, 0]
    sampling = pre_lp(old_logits)

    def adapted(th):
        inner = lambda t: lvc_objective(pre_lp(t), pre_adv, sampling_log_probs=sampling)
        return th + 0.5 * grad(inner)(th)

    f = lambda th: _promp_of(adapted(th), old_logits, acts, adv, mask)
    x = theta.clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    # the penalty pulls towards the old policy: with zero advantages, ascent reduces the KL
    zero = lambda th: _promp_of(th, old_logits, acts, torch.zeros_like(adv), mask, kl_coeff=1.0)
    assert zero(theta + 0.1 * grad(zero)(theta)) > zero(theta)


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
