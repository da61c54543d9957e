"""Discounted returns, GAE and advantage normalisation against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

from metaops.estimators import dice_objective
from metaops.rl import discounted_returns, gae, normalize_advantages

D = torch.float64


def test_discounted_returns_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = discounted_returns(r, gamma=0.5, mask=mask)
    expected = torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0], [4 + 0.5 * 5, 5.0, 0.0]], dtype=D)
    torch.testing.assert_close(out, expected)


def test_gae_by_hand():
    r = torch.tensor([1.0, 0.0, 2.0], dtype=D)
    v = torch.tensor([0.5, 1.0, 1.5], dtype=D)
    gamma, lam = 0.9, 0.8
    d0 = 1.0 + gamma * 1.0 - 0.5
    d1 = 0.0 + gamma * 1.5 - 1.0
    d2 = 2.0 + gamma * 0.0 - 1.5  # terminal: next value 0
    expected = torch.tensor([d0 + gamma * lam * (d1 + gamma * lam * d2), d1 + gamma * lam * d2, d2], dtype=D)
    torch.testing.assert_close(gae(r, v, gamma=gamma, gae_lambda=lam), expected)
    # truncated episode: bootstrap with last_values
    boot = gae(r, v, gamma=gamma, gae_lambda=lam, last_values=torch.tensor(10.0, dtype=D))
    torch.testing.assert_close(boot[-1], torch.tensor(d2 + gamma * 10.0, dtype=D))


def test_gae_limits():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4, 7, generator=g, dtype=D)
    v = torch.randn(4, 7, generator=g, dtype=D)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 1:] = False
    ret = discounted_returns(r, gamma=0.95, mask=mask)
    one = gae(r, v, gamma=0.95, gae_lambda=1.0, mask=mask)
    torch.testing.assert_close(one, torch.where(mask, ret - v, 0.0))
    zero = gae(r, v, gamma=0.95, gae_lambda=0.0, mask=mask)
    nxt = torch.where(mask.roll(-1, -1) & (torch.arange(7) < 6), v.roll(-1, -1), 0.0)
    torch.testing.assert_close(zero, torch.where(mask, r + 0.95 * nxt - v, 0.0))


@pytest.mark.parametrize(
    "fn",
    [
        lambda r, v, m: discounted_returns(r, gamma=0.9, mask=m),
        lambda r, v, m: gae(r, v, gamma=0.9, gae_lambda=0.7, mask=m),
        lambda r, v, m: normalize_advantages(r, mask=m),
    ],
    ids=["returns", "gae", "normalize"],
)
def test_padding_is_irrelevant_and_vmap_equals_loop(fn):
    g = torch.Generator().manual_seed(1)
    r = torch.randn(3, 6, generator=g, dtype=D)
    v = torch.randn(3, 6, generator=g, dtype=D)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 2:] = False
    mask[2, 5:] = False
    out = fn(r, v, mask)
    garbage = fn(torch.where(mask, r, torch.nan), torch.where(mask, v, 1e9), mask)
    torch.testing.assert_close(out, garbage)
    assert torch.all(out[~mask] == 0)
    # vmap over a task dimension equals the Python loop
    tasks = torch.stack([r, 2 * r]), torch.stack([v, v]), torch.stack([mask, mask])
    batched = vmap(fn)(*tasks)
    looped = torch.stack([fn(*(t[k] for t in tasks)) for k in range(2)])
    torch.testing.assert_close(batched, looped)


def test_returns_equal_per_episode_computation():
    g = torch.Generator().manual_seed(2)
    r = torch.randn(3, 6, generator=g, dtype=D)
    v = torch.randn(3, 6, generator=g, dtype=D)
    lengths = [6, 2, 4]
    mask = torch.arange(6) < torch.tensor(lengths)[:, None]
    ret = discounted_returns(r, gamma=0.9, mask=mask)
    adv = gae(r, v, gamma=0.9, gae_lambda=0.7, mask=mask)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(ret[i, :n], discounted_returns(r[i, :n], gamma=0.9))
        torch.testing.assert_close(adv[i, :n], gae(r[i, :n], v[i, :n], gamma=0.9, gae_lambda=0.7))


def _task_batch(seed=3):
    """(tasks, episodes, T) advantages of very different scales, right-padded."""
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(2, 5, 8, generator=g, dtype=D) * torch.tensor([1.0, 50.0], dtype=D)[:, None, None]
    adv = adv + torch.tensor([0.0, 30.0], dtype=D)[:, None, None]
    lengths = torch.randint(1, 9, (2, 5), generator=g)
    mask = torch.arange(8) < lengths[..., None]
    return adv, mask


def test_normalize_advantages_is_per_task_by_default():
    adv, mask = _task_batch()
    out = normalize_advantages(adv, mask=mask)
    for k in range(2):
        real = out[k][mask[k]]
        torch.testing.assert_close(real.mean(), torch.zeros((), dtype=D), atol=1e-12, rtol=0)
        torch.testing.assert_close(real.std(unbiased=False), torch.ones((), dtype=D))
        # each task is normalised as if it were alone
        torch.testing.assert_close(out[k], normalize_advantages(adv[k], mask=mask[k]))
    torch.testing.assert_close(out, normalize_advantages(adv, mask=mask, dim=(-2, -1)))
    assert torch.all(out[~mask] == 0)
    # it is outside the graph
    x = adv.clone().requires_grad_(True)
    assert not normalize_advantages(x).requires_grad


def test_normalize_advantages_across_tasks_with_dim_none():
    adv, mask = _task_batch()
    out = normalize_advantages(adv, mask=mask, dim=None)
    real = out[mask]
    torch.testing.assert_close(real.mean(), torch.zeros((), dtype=D), atol=1e-12, rtol=0)
    torch.testing.assert_close(real.std(unbiased=False), torch.ones((), dtype=D))
    assert out[0][mask[0]].abs().max() < 0.5  # the small-scale task is squashed
    # a single episode (T,) is normalised over its steps by default
    one = normalize_advantages(adv[0, 0])
    torch.testing.assert_close(one, (adv[0, 0] - adv[0, 0].mean()) / (adv[0, 0].std(unbiased=False) + 1e-8))


def _gap_mask():
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False  # right padding: fine
    mask[0, 1] = False  # 1 0 1 1 1: a second episode in row 0
    return mask


@pytest.mark.parametrize(
    "fn",
    [
        lambda r, m: discounted_returns(r, gamma=0.9, mask=m),
        lambda r, m: gae(r, r, gamma=0.9, gae_lambda=0.7, mask=m),
        lambda r, m: normalize_advantages(r, mask=m),
    ],
    ids=["returns", "gae", "normalize"],
)
def test_a_gap_in_the_mask_raises(fn):
    """One trajectory per row (right padding), the rule of the estimators and the baseline too."""
    r = torch.ones(2, 5, dtype=D)
    with pytest.raises(ValueError, match=r"right-padded.*mask\[0\] has a 0 followed by a 1.*separate rows"):
        fn(r, _gap_mask())
    with pytest.raises(ValueError, match="right-padded"):
        fn(r, _gap_mask().to(D))  # float masks too
    right_padded = _gap_mask()
    right_padded[0] = True
    assert fn(r, right_padded).shape == r.shape


def test_returns_agree_with_the_dice_value_on_right_padded_masks():
    """discounted_returns and dice_objective read a mask row the same way (one trajectory)."""
    g = torch.Generator().manual_seed(4)
    r = torch.randn(4, 7, generator=g, dtype=D)
    mask = torch.arange(7) < torch.tensor([7, 3, 1, 5])[:, None]
    ret = discounted_returns(r, gamma=0.8, mask=mask)
    torch.testing.assert_close(ret[:, 0], dice_objective(torch.zeros_like(r), r, gamma=0.8, mask=mask))


def test_bad_inputs_raise():
    r = torch.ones(2, 3)
    with pytest.raises(ValueError, match="non-finite"):
        discounted_returns(torch.tensor([1.0, torch.nan]), gamma=0.9)
    with pytest.raises(ValueError, match="non-finite"):
        gae(torch.tensor([1.0, torch.inf]), torch.zeros(2), gamma=0.9, gae_lambda=0.9)
    with pytest.raises(ValueError, match="all zeros"):
        discounted_returns(r, gamma=0.9, mask=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="values has shape"):
        gae(r, torch.ones(2, 4), gamma=0.9, gae_lambda=0.9)
    with pytest.raises(TypeError, match="floating-point"):
        discounted_returns(torch.ones(3, dtype=torch.long), gamma=0.9)
    with pytest.raises(ValueError, match="gae_lambda"):
        gae(r, r, gamma=0.9, gae_lambda=2.0)
    with pytest.raises(ValueError, match="last_values must have shape"):
        gae(r, r, gamma=0.9, gae_lambda=0.9, last_values=torch.ones(3))
    with pytest.raises(ValueError, match="no real"):
        normalize_advantages(r, mask=torch.tensor([[1, 1, 0], [0, 0, 0]]), dim=-1)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    gamma=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_gae_with_unit_lambda_is_returns_minus_values(lengths, gamma, seed):
    g = torch.Generator().manual_seed(seed)
    T = 6
    r = torch.randn(len(lengths), T, generator=g, dtype=D)
    v = torch.randn(len(lengths), T, generator=g, dtype=D)
    mask = torch.arange(T) < torch.tensor(lengths)[:, None]
    ret = discounted_returns(r, gamma=gamma, mask=mask)
    torch.testing.assert_close(gae(r, v, gamma=gamma, gae_lambda=1.0, mask=mask), torch.where(mask, ret - v, 0.0))
    # and the return at t = 0 is the discounted sum of the episode's rewards
    t = torch.arange(T, dtype=D)
    torch.testing.assert_close(ret[:, 0], (torch.where(mask, r, 0.0) * torch.tensor(gamma, dtype=D) ** t).sum(-1))


# --- several episodes per row (dones) -----------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.sampled_from([0.0, 0.5, 0.99, 1.0]),
       lam=st.sampled_from([0.0, 0.7, 1.0]))
def test_dones_split_a_row_into_episodes_computed_one_by_one(seed, gamma, lam):
    """A row with episodes ending at ``dones`` equals each episode alone, bootstrapped from its done value."""
    g = torch.Generator().manual_seed(seed)
    rows, T = 3, 9
    rewards, values = torch.randn(rows, T, generator=g, dtype=D), torch.randn(rows, T, generator=g, dtype=D)
    dones = torch.rand(rows, T, generator=g) < 0.3
    done_values = torch.randn(rows, T, generator=g, dtype=D)
    last_values = torch.randn(rows, generator=g, dtype=D)
    lengths = torch.randint(1, T + 1, (rows,), generator=g)
    mask = torch.arange(T) < lengths[:, None]
    got = gae(rewards, values, gamma=gamma, gae_lambda=lam, mask=mask, last_values=last_values, dones=dones,
              done_values=done_values)
    got_returns = discounted_returns(rewards, gamma=gamma, mask=mask, dones=dones)
    want, want_returns = torch.zeros_like(got), torch.zeros_like(got)
    for r in range(rows):
        start = 0
        for t in range(int(lengths[r])):
            last = t == int(lengths[r]) - 1
            if dones[r, t] or last:  # the episode [start, t] alone, bootstrapped as documented
                boot = done_values[r, t] if dones[r, t] else last_values[r]
                piece = slice(start, t + 1)
                want[r, piece] = gae(rewards[r, piece], values[r, piece], gamma=gamma, gae_lambda=lam,
                                     last_values=boot)
                want_returns[r, piece] = discounted_returns(rewards[r, piece], gamma=gamma)
                start = t + 1
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_returns, want_returns)


def test_dones_are_checked():
    r = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="bool tensor"):
        gae(r, r, gamma=0.9, gae_lambda=1.0, dones=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="shape of rewards"):
        discounted_returns(r, gamma=0.9, dones=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="done_values needs dones"):
        gae(r, r, gamma=0.9, gae_lambda=1.0, done_values=r)
