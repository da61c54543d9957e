"""The linear feature baseline against rllab's numpy reference and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import vmap

from metaops.rl import (
    LinearFeatureBaseline,
    fit_linear_baseline,
    linear_baseline_advantages,
    linear_baseline_features,
    predict_linear_baseline,
)

D = torch.float64


def _rllab_fit(paths, reg_coeff=1e-5):
    """rllab's LinearFeatureBaseline.fit, verbatim in numpy, on a list of variable-length paths."""

    def features(obs):
        o = np.clip(obs, -10, 10)
        n = len(obs)
        al = np.arange(n).reshape(-1, 1) / 100.0
        return np.concatenate([o, o**2, al, al**2, al**3, np.ones((n, 1))], axis=1)

    featmat = np.concatenate([features(p["observations"]) for p in paths])
    returns = np.concatenate([p["returns"] for p in paths])
    for _ in range(5):
        coeffs = np.linalg.lstsq(
            featmat.T.dot(featmat) + reg_coeff * np.identity(featmat.shape[1]),
            featmat.T.dot(returns),
            rcond=-1,
        )[0]
        if not np.any(np.isnan(coeffs)):
            break
        reg_coeff *= 10
    return coeffs


def _episodes(seed, lengths=(7, 3, 5), obs_dim=2):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    obs = 4 * torch.randn(len(lengths), T, obs_dim, generator=g, dtype=D)
    obs[0, 0, 0] = 25.0  # exercises the clip at +-10
    returns = torch.randn(len(lengths), T, generator=g, dtype=D) + obs[..., 0]
    mask = torch.arange(T) < torch.tensor(lengths)[:, None]
    return obs, returns, mask, lengths


def test_features_by_hand():
    obs = torch.tensor([[[20.0, -0.5], [1.0, 2.0]]], dtype=D)
    f = linear_baseline_features(obs)
    expected_step1 = torch.tensor([1.0, 2.0, 1.0, 4.0, 0.01, 1e-4, 1e-6, 1.0], dtype=D)
    torch.testing.assert_close(f[0, 1], expected_step1)
    torch.testing.assert_close(f[0, 0, :4], torch.tensor([10.0, -0.5, 100.0, 0.25], dtype=D))


def test_fit_matches_rllab_on_padded_episodes():
    obs, returns, mask, lengths = _episodes(0)
    paths = [{"observations": obs[i, :n].numpy(), "returns": returns[i, :n].numpy()} for i, n in enumerate(lengths)]
    ref = torch.from_numpy(_rllab_fit(paths))
    coeffs = fit_linear_baseline(obs, returns, mask=mask)
    torch.testing.assert_close(coeffs, ref, rtol=1e-6, atol=1e-8)
    # garbage in padding changes nothing
    garbage_obs = torch.where(mask[..., None], obs, 1e6)
    garbage_ret = torch.where(mask, returns, torch.nan)
    torch.testing.assert_close(fit_linear_baseline(garbage_obs, garbage_ret, mask=mask), coeffs)


def test_fit_recovers_an_exactly_representable_function():
    obs, _, mask, _ = _episodes(1)
    t = torch.arange(obs.shape[1], dtype=D) / 100
    o = obs.clamp(-10, 10)
    truth = 2.0 * o[..., 0] - o[..., 1] ** 2 + 3.0 * t - 0.5
    coeffs = fit_linear_baseline(obs, truth, mask=mask, reg=1e-10)
    pred = predict_linear_baseline(coeffs, obs)
    torch.testing.assert_close(pred[mask], truth[mask], atol=1e-6, rtol=0)


def test_batched_over_tasks_equals_loop():
    tasks = [_episodes(s) for s in range(3)]
    obs = torch.stack([t[0] for t in tasks])
    ret = torch.stack([t[1] for t in tasks])
    mask = torch.stack([t[2] for t in tasks])
    batched = fit_linear_baseline(obs, ret, mask=mask)
    looped = torch.stack([fit_linear_baseline(o, r, mask=m) for o, r, m, _ in tasks])
    torch.testing.assert_close(batched, looped)
    vmapped = vmap(lambda o, r, m: fit_linear_baseline(o, r, mask=m))(obs, ret, mask)
    torch.testing.assert_close(vmapped, looped)
    values = LinearFeatureBaseline.fit(obs, ret, mask=mask)(obs)
    assert values.shape == ret.shape
    torch.testing.assert_close(values[1], predict_linear_baseline(looped[1], obs[1]))


def _badly_conditioned(seed):
    """HalfCheetah-like data: T = 200 steps (tau up to 2), observations of magnitude ~10."""
    g = torch.Generator().manual_seed(seed)
    E, T, obs_dim = 20, 200, 4
    obs = (9.0 + torch.randn(E, T, obs_dim, generator=g, dtype=D)).float()
    rewards = 1.0 + 0.5 * (obs[..., 0].double() - 9.0) + 0.1 * torch.randn(E, T, generator=g, dtype=D)
    lengths = torch.randint(150, T + 1, (E,), generator=g)
    mask = torch.arange(T) < lengths[:, None]
    returns = torch.zeros(E, T, dtype=D)  # discounted rewards to go, by the definition
    for t in reversed(range(T)):
        following = returns[:, t + 1] if t + 1 < T else torch.zeros(E, dtype=D)
        returns[:, t] = torch.where(mask[:, t], rewards[:, t] + 0.99 * following, 0.0)
    return obs, returns.float(), mask


def _r2(pred, target, mask):
    pred, target = pred[mask].double(), target[mask].double()
    return float(1 - ((pred - target) ** 2).sum() / ((target - target.mean()) ** 2).sum())


def test_float32_fit_matches_the_float64_fit_on_badly_conditioned_features():
    """Regression: a float32 normal-equation fit explained as little as R^2 = 0.05 here."""
    for seed in range(3):
        obs, returns, mask = _badly_conditioned(seed)
        reference = fit_linear_baseline(obs.double(), returns.double(), mask=mask)
        coeffs = fit_linear_baseline(obs, returns, mask=mask)
        assert coeffs.dtype == torch.float32
        torch.testing.assert_close(coeffs, reference.float(), rtol=1e-5, atol=1e-4)
        r2_64 = _r2(predict_linear_baseline(reference, obs.double()), returns, mask)
        r2_32 = _r2(predict_linear_baseline(coeffs, obs), returns, mask)
        assert r2_64 > 0.85
        assert abs(r2_32 - r2_64) < 1e-5
    # and it still vmaps over tasks, in float32
    tasks = [_badly_conditioned(seed) for seed in range(2)]
    stacked = [torch.stack(x) for x in zip(*tasks, strict=True)]
    vmapped = vmap(lambda o, r, m: fit_linear_baseline(o, r, mask=m))(*stacked)
    assert vmapped.dtype == torch.float32
    torch.testing.assert_close(vmapped, torch.stack([fit_linear_baseline(o, r, mask=m) for o, r, m in tasks]))


def test_a_gap_in_the_mask_raises():
    """One trajectory per row: a 0 followed by a 1 would give the time features of the wrong t."""
    obs, returns, mask, _ = _episodes(4)
    gap = mask.clone()
    gap[1, 1] = False  # episode 1 (length 3) now "restarts" at step 2
    with pytest.raises(ValueError, match=r"right-padded.*mask\[1\] has a 0 followed by a 1.*separate rows"):
        fit_linear_baseline(obs, returns, mask=gap)
    with pytest.raises(ValueError, match="right-padded"):
        LinearFeatureBaseline.fit(obs, returns, mask=gap)


def test_fit_is_outside_the_graph():
    obs, returns, mask, _ = _episodes(2)
    coeffs = fit_linear_baseline(obs.requires_grad_(True), returns, mask=mask)
    assert not coeffs.requires_grad


def test_bad_inputs_raise():
    obs, returns, mask, _ = _episodes(3)
    with pytest.raises(ValueError, match="matching returns"):
        fit_linear_baseline(obs[:, :-1], returns, mask=mask)
    with pytest.raises(ValueError, match="non-finite"):
        fit_linear_baseline(obs, torch.where(mask, torch.inf, 0.0).to(D), mask=mask)
    with pytest.raises(ValueError, match="all zeros"):
        fit_linear_baseline(obs, returns, mask=torch.zeros_like(mask))
    with pytest.raises(TypeError, match="dtype"):
        fit_linear_baseline(obs.float(), returns, mask=mask)
    with pytest.raises(ValueError, match="reg"):
        fit_linear_baseline(obs, returns, reg=0.0)
    with pytest.raises(ValueError, match="features"):
        predict_linear_baseline(torch.zeros(5, dtype=D), obs)


def _rllab_advantages(paths, gamma, gae_lambda):
    """The MAML/ProMP reference pipeline in numpy: per-path returns, rllab's fit, GAE, normalisation."""
    for p in paths:
        r = p["rewards"]
        p["returns"] = np.array([sum(gamma**k * r[t + k] for k in range(len(r) - t)) for t in range(len(r))])
    coeffs = _rllab_fit(paths)
    advantages = []
    for p in paths:
        o = np.clip(p["observations"], -10, 10)
        al = np.arange(len(o)).reshape(-1, 1) / 100.0
        b = np.concatenate([o, o**2, al, al**2, al**3, np.ones((len(o), 1))], axis=1).dot(coeffs)
        b = np.append(b, 0.0)
        deltas = p["rewards"] + gamma * b[1:] - b[:-1]
        advantages.append(np.array([sum((gamma * gae_lambda) ** k * deltas[t + k] for k in range(len(deltas) - t))
                                    for t in range(len(deltas))]))
    flat = np.concatenate(advantages)
    return [(a - flat.mean()) / (flat.std() + 1e-8) for a in advantages]


@pytest.mark.parametrize("gae_lambda", [1.0, 0.95])
def test_linear_baseline_advantages_match_the_reference_pipeline_per_task(gae_lambda):
    gamma = 0.9
    tasks = [_episodes(seed) for seed in (0, 1)]
    obs = torch.stack([t[0] for t in tasks])
    mask = torch.stack([t[2] for t in tasks]).to(D)
    rewards = torch.randn(obs.shape[:3], generator=torch.Generator().manual_seed(5), dtype=D) * mask
    adv = linear_baseline_advantages(obs, rewards, mask=mask, gamma=gamma, gae_lambda=gae_lambda)
    for i, (o, _, _, lengths) in enumerate(tasks):
        paths = [{"observations": o[e, :n].numpy(), "rewards": rewards[i, e, :n].numpy()}
                 for e, n in enumerate(lengths)]
        for e, expected in enumerate(_rllab_advantages(paths, gamma, gae_lambda)):
            torch.testing.assert_close(adv[i, e, : lengths[e]], torch.from_numpy(expected), rtol=1e-5, atol=1e-5)
            assert (adv[i, e, lengths[e]:] == 0).all()
