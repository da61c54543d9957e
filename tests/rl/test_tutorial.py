"""Runs the code of docs/tutorials/rl_meta_gradients.md (tiny settings) so it cannot rot."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorials" / "rl_meta_gradients.md"
TINY = {"META_BATCH": 2, "EPISODES": 2, "HORIZON": 12, "ITERATIONS": 2}


def _tutorial_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    assert len(blocks) >= 3, "the tutorial lost its code blocks"
    code = "\n".join(blocks)
    for name, value in TINY.items():
        code, count = re.subn(rf"^{name} = \d+", f"{name} = {value}", code, flags=re.M)
        assert count == 1, f"setting {name} not found in the tutorial"
    return code


def test_tutorial_runs_and_produces_a_meta_gradient(capsys):
    pytest.importorskip("gymnasium")
    namespace: dict = {"__name__": "tutorial"}
    exec(compile(_tutorial_code(), str(TUTORIAL), "exec"), namespace)
    policy = namespace["policy"]
    assert torch.isfinite(namespace["meta_loss"])
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert capsys.readouterr().out.count("post-update return") == TINY["ITERATIONS"]


def test_tutorial_meta_gradient_contains_the_inner_hessian_term():
    """The meta-gradient flows through the inner step: it differs from a first-order one."""
    pytest.importorskip("gymnasium")
    namespace: dict = {"__name__": "tutorial"}
    code = _tutorial_code().split("meta_optimizer = torch.optim.Adam")[0]
    exec(compile(code, str(TUTORIAL), "exec"), namespace)
    policy, objective = namespace["policy"], namespace["objective"]
    rollout, fitted_values = namespace["rollout"], namespace["fitted_values"]
    params = {k: v.detach() for k, v in policy.named_parameters()}
    pre = rollout(params, 0.5, seed=0)
    pre_values = fitted_values(pre)
    adapted0 = {k: params[k] + 0.1 * g for k, g in torch.func.grad(objective)(params, pre, pre_values).items()}
    post = rollout(adapted0, 0.5, seed=1)
    post_values = fitted_values(post)

    def meta(p, first_order):
        g = torch.func.grad(objective)(p, pre, pre_values)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        return objective({k: p[k] + 0.1 * g[k] for k in p}, post, post_values)

    full = torch.func.grad(lambda p: meta(p, False))(params)
    first = torch.func.grad(lambda p: meta(p, True))(params)
    diff = max(float((full[k] - first[k]).abs().max()) for k in params)
    size = max(float(first[k].abs().max()) for k in params)
    assert diff > 1e-5 * size  # relative (far above float32 rounding): REWARD_SCALE scales both


def _pendulum_episodes(policy, params, *, reward_scale, episodes=4, horizon=50, seed=0):
    """Pendulum-v1 episodes in the tutorial's layout: (observations, actions, rewards, mask)."""
    import gymnasium as gym

    env, generator = gym.make("Pendulum-v1"), torch.Generator().manual_seed(seed)
    observations, actions = torch.zeros(episodes, horizon, 3), torch.zeros(episodes, horizon, 1)
    rewards, mask = torch.zeros(episodes, horizon), torch.ones(episodes, horizon)
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        for t in range(horizon):
            observations[episode, t] = torch.as_tensor(obs, dtype=torch.float32)
            with torch.no_grad():
                dist = torch.func.functional_call(policy, params, (observations[episode, t],))
            actions[episode, t] = policy.sample(dist, generator=generator)
            obs, reward, *_ = env.step(actions[episode, t].numpy())
            rewards[episode, t] = reward_scale * float(reward)
    return observations, actions, rewards, mask


def test_tutorial_inner_step_check_warns_on_raw_pendulum_rewards():
    """The reported trap: the tutorial's step with raw Pendulum rewards (about -5 per step) moved the
    log-std by several units (23 in the report) and blew up the meta-gradient, silently. The tutorial's
    check_inner_step call now warns on that step, and not once the rewards are scaled as it advises."""
    pytest.importorskip("gymnasium")
    from metaops.rl import GaussianMLPPolicy, InnerStepWarning

    namespace: dict = {"__name__": "tutorial"}
    exec(compile(_tutorial_code().split("meta_optimizer = torch.optim.Adam")[0], str(TUTORIAL), "exec"), namespace)
    torch.manual_seed(0)
    policy = namespace["policy"] = GaussianMLPPolicy(3, 1, hidden_sizes=(32, 32))  # `objective` uses it
    objective, fitted_values = namespace["objective"], namespace["fitted_values"]
    check_inner_step, inner_lr = namespace["check_inner_step"], namespace["INNER_LR"]
    params = dict(policy.named_parameters())

    def inner_step(reward_scale):
        pre = _pendulum_episodes(policy, params, reward_scale=reward_scale)
        grads = torch.func.grad(objective)(params, pre, fitted_values(pre))
        adapted = {k: params[k] + inner_lr * grads[k] for k in params}
        return check_inner_step(policy, params, adapted, pre[0], mask=pre[3]), adapted

    with pytest.warns(InnerStepWarning, match="implausible inner step"):
        stats, adapted = inner_step(1.0)
    assert stats["kl"] > 10  # nats per state
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats, _ = inner_step(1e-3)  # the scale the tutorial gives for Pendulum
    assert stats["kl"] < 0.1 and stats["log_std_change"] < 0.1
