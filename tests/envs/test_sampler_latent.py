"""The sampler's per-task latent (PEARL's z) and the transitions of an EpisodeBatch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metaops import envs, rl


class LinearPolicy(torch.nn.Module):
    """Gaussian policy with a linear mean and a fixed std, on inputs of size ``in_dim``."""

    def __init__(self, in_dim: int, log_std: float = -1.0):
        super().__init__()
        self.mean = torch.nn.Linear(in_dim, 2)
        self.log_std = torch.nn.Parameter(torch.full((2,), log_std))

    def forward(self, obs):
        return self.mean(obs), self.log_std.expand(obs.shape[:-1] + (2,))

    def sample(self, dist, *, generator=None):
        mean, log_std = dist
        return mean + log_std.exp() * torch.randn(mean.shape, generator=generator)

    def log_prob(self, dist, actions):
        mean, log_std = dist
        return torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)


def _setup(num_tasks=3, episodes=2):
    tasks = envs.task_distribution("Navigation2D").sample_tasks(num_tasks, generator=torch.Generator().manual_seed(0))
    return envs.make_batched("Navigation2D", num_tasks=num_tasks, episodes_per_task=episodes), tasks


def _params(module):
    return {k: v.detach() for k, v in module.named_parameters()}


def _assert_batches_equal(a, b):
    for name in ("observations", "final_observations", "actions", "rewards", "log_probs", "mask", "terminated",
                 "truncated"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_zero_weights_on_the_latent_give_the_batch_without_it():
    """The latent is appended to the policy's input and changes nothing else (same random stream)."""
    env, tasks = _setup()
    torch.manual_seed(0)
    plain = LinearPolicy(2)
    with_z = LinearPolicy(5)
    with torch.no_grad():
        with_z.mean.weight.zero_()
        with_z.mean.weight[:, :2] = plain.mean.weight
        with_z.mean.bias.copy_(plain.mean.bias)
    latent = torch.randn(3, 3)
    a = envs.sample_episodes(env, plain, _params(plain), tasks, generator=torch.Generator().manual_seed(1), horizon=7)
    b = envs.sample_episodes(env, with_z, _params(with_z), tasks, generator=torch.Generator().manual_seed(1),
                             horizon=7, latent=latent)
    _assert_batches_equal(a, b)


def test_the_latent_reaches_the_policy_per_task_and_per_episode():
    env, tasks = _setup()
    policy = LinearPolicy(4, log_std=-30.0)  # deterministic: the action is the mean
    with torch.no_grad():
        policy.mean.weight.copy_(torch.tensor([[0.0, 0, 1, 0], [0, 0, 0, 1]]))  # action = z
        policy.mean.bias.zero_()
    latent = torch.tensor([[[0.01, 0.02], [0.03, 0.04]], [[-0.01, 0.0], [0.0, 0.05]], [[0.02, 0.02], [0.06, 0.0]]])
    batch = envs.sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator().manual_seed(0),
                                 horizon=3, latent=latent)
    torch.testing.assert_close(batch.actions[:, :, 0], latent)
    per_task = envs.sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator().manual_seed(0),
                                    horizon=3, latent=latent[:, 0])
    torch.testing.assert_close(per_task.actions[:, :, 0], latent[:, :1].expand(3, 2, 2))
    # (task, dim) is the same as the same latent repeated over the episodes
    repeated = envs.sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator().manual_seed(0),
                                    horizon=3, latent=latent[:, :1].expand(3, 2, 2))
    _assert_batches_equal(per_task, repeated)


def test_latent_with_per_task_params():
    env, tasks = _setup()
    policy = LinearPolicy(4)
    stacked = {k: v.unsqueeze(0).repeat(3, *[1] * v.dim()) for k, v in _params(policy).items()}
    a = envs.sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator().manual_seed(2),
                             horizon=5, latent=torch.ones(3, 2))
    b = envs.sample_episodes(env, policy, stacked, tasks, generator=torch.Generator().manual_seed(2), horizon=5,
                             latent=torch.ones(3, 2))
    torch.testing.assert_close(a.actions, b.actions)


@pytest.mark.parametrize("latent, error, match", [
    (torch.zeros(2, 2), ValueError, r"expected \(task, dim\) = \(3, dim\)"),
    (torch.zeros(3, 3, 2), ValueError, r"\(task, episode, dim\) = \(3, 2, dim\)"),
    (torch.zeros(3), ValueError, "latent has shape"),
    (torch.zeros(3, 2, dtype=torch.long), TypeError, "floating point"),
    (np.zeros((3, 2)), TypeError, "floating point tensor"),
    (torch.full((3, 2), float("nan")), ValueError, "non-finite"),
])
def test_bad_latents_raise(latent, error, match):
    env, tasks = _setup()
    policy = LinearPolicy(4)
    with pytest.raises(error, match=match):
        envs.sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator(), horizon=3,
                             latent=latent)


def test_a_policy_of_the_wrong_input_size_fails_loudly():
    env, tasks = _setup()
    policy = LinearPolicy(2)
    with pytest.raises(RuntimeError):
        envs.sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator(), horizon=3,
                             latent=torch.zeros(3, 2))


def test_next_observations_follow_the_dynamics_and_stop_at_the_episode_end():
    """Navigation moves by the clipped action: s' = s + clip(a), checked on every real step."""
    env, tasks = _setup(num_tasks=2, episodes=3)
    policy = LinearPolicy(2, log_std=-2.0)
    batch = envs.sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator().manual_seed(0),
                                 horizon=8)
    mask = batch.mask.bool()
    expected = batch.observations + batch.actions.clamp(-0.1, 0.1)
    nxt = batch.next_observations
    torch.testing.assert_close(nxt[mask], expected[mask])
    assert (nxt[~mask] == 0).all()
    last = batch.lengths - 1
    for i in range(2):
        for e in range(3):
            assert torch.equal(nxt[i, e, last[i, e]], batch.final_observations[i, e])


def test_next_observations_with_terminated_episodes():
    """An episode that reaches the goal ends with its terminal observation, then padding."""
    env, _ = _setup(num_tasks=1, episodes=1)
    tasks = [envs.NavigationTask(goal=(0.05, 0.0))]
    policy = LinearPolicy(2, log_std=-30.0)
    with torch.no_grad():
        policy.mean.weight.zero_()
        policy.mean.bias.copy_(torch.tensor([0.05, 0.0]))  # reaches the goal in one step
    batch = envs.sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator(), horizon=4)
    assert batch.mask[0, 0].tolist() == [1, 0, 0, 0] and batch.terminated[0, 0, 0]
    torch.testing.assert_close(batch.next_observations[0, 0, 0], torch.tensor([0.05, 0.0]))
    (steps,) = batch.transitions()
    assert steps["terminated"].tolist() == [True] and steps["truncated"].tolist() == [False]


def test_transitions_feed_a_replay_buffer():
    env, tasks = _setup(num_tasks=2, episodes=2)
    policy = LinearPolicy(2)
    batch = envs.sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator().manual_seed(0),
                                 horizon=5)
    per_task = batch.transitions()
    assert len(per_task) == 2
    for i, steps in enumerate(per_task):
        n = int(batch.mask[i].sum())
        assert steps["obs"].shape == (n, 2) and steps["actions"].shape == (n, 2) and steps["rewards"].shape == (n,)
        assert steps["truncated"].sum() == 2  # each episode cut by the horizon once
        torch.testing.assert_close(steps["obs"][:5], batch.observations[i, 0])
        buffer = rl.ReplayBuffer(1, 100, obs_shape=2, act_shape=2)
        buffer.add(*(steps[k].unsqueeze(0) for k in ("obs", "actions", "rewards", "next_obs", "terminated")))
        assert len(buffer) == n
        torch.testing.assert_close(buffer.storage["next_obs"][0, :n], steps["next_obs"])
