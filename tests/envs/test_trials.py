"""The policy protocols and the trial sampler for recurrent policies (RL²)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from metaops import rl
from metaops.envs import (
    BatchedEnv,
    EnvError,
    NavigationTask,
    Policy,
    RecurrentPolicy,
    StepResult,
    TrialBatch,
    make_batched,
    sample_trials,
    task_distribution,
)

FIELDS = ("inputs", "observations", "final_observations", "actions", "rewards", "log_probs", "mask", "terminated",
          "truncated", "episode_index")


class CountingPolicy(nn.Module):
    """A recurrent test policy whose action reveals its carry: every action component is the step count.

    The carry counts the policy steps since ``initial_carry``; ``sample`` returns the mean
    (no noise), so ``actions[..., 0]`` is 1, 2, 3, ... along a trial. ``nan_at`` makes the
    action NaN at that count.
    """

    def __init__(self, act_dim=2, nan_at=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.act_dim, self.nan_at = act_dim, nan_at

    def initial_carry(self, batch_shape, *, dtype=torch.float32):
        return torch.zeros((*batch_shape, 1), dtype=dtype)

    def forward(self, inputs, carry):
        count = carry + self.scale
        mean = count.expand(*count.shape[:-1], self.act_dim)
        if self.nan_at is not None:
            mean = torch.where(count == self.nan_at, torch.full_like(mean, math.nan), mean)
        return (mean, torch.zeros_like(mean)), count

    def sample(self, dist, *, generator=None):
        return dist[0].clone()

    def log_prob(self, dist, actions):
        return rl.gaussian_log_prob(dist[0], dist[1], actions)

    def kl(self, dist_p, dist_q):
        return rl.gaussian_kl(*dist_p, *dist_q)

    def entropy(self, dist):
        return rl.gaussian_entropy(dist[1])


def _params(policy):
    return {k: v.detach() for k, v in policy.named_parameters()}


def _tasks(name, n, seed=0):
    return task_distribution(name).sample_tasks(n, generator=torch.Generator().manual_seed(seed))


def _assert_equal(a: TrialBatch, b: TrialBatch):
    for field in FIELDS:
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.infos.keys() == b.infos.keys() and all(torch.equal(a.infos[k], b.infos[k]) for k in a.infos)


def _gru(env, hidden=8):
    torch.manual_seed(0)
    return rl.GaussianGRUPolicy(env.observation_dim + env.action_dim + 2, env.action_dim, hidden_size=hidden,
                                init_log_std=math.log(0.5), action_bounds=(env.action_low, env.action_high))


# --- the protocols --------------------------------------------------------------------------------

def test_mlp_policies_satisfy_the_stateless_protocol_only():
    for policy in (rl.GaussianMLPPolicy(3, 2, hidden_sizes=(4,)), rl.CategoricalMLPPolicy(3, 2, hidden_sizes=(4,))):
        assert isinstance(policy, Policy)
        assert not isinstance(policy, RecurrentPolicy)


def test_recurrent_policies_satisfy_the_recurrent_protocol():
    assert isinstance(rl.GaussianGRUPolicy(6, 2, hidden_size=4), RecurrentPolicy)
    assert isinstance(CountingPolicy(), RecurrentPolicy)


def test_a_stateless_policy_is_rejected_with_a_clear_error():
    env = make_batched("Navigation2D", num_tasks=1, episodes_per_task=1)
    policy = rl.GaussianMLPPolicy(2, 2, hidden_sizes=(4,))
    with pytest.raises(TypeError, match="recurrent policy.*sample_episodes"):
        sample_trials(env, policy, _params(policy), _tasks("Navigation2D", 1), episodes_per_trial=2,
                      generator=torch.Generator().manual_seed(0))


# --- the carry, the resets and the inputs --------------------------------------------------------

def test_carry_is_kept_across_the_episodes_of_a_trial_and_reset_between_trials():
    env = make_batched("Navigation2D", num_tasks=2, episodes_per_task=3)  # 3 trials per task
    policy = CountingPolicy()
    tasks = [NavigationTask(goal=(-0.4, 0.3)), NavigationTask(goal=(0.45, -0.35))]  # never reached
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # a second batch starts every trial from the initial carry again
        batch = sample_trials(env, policy, _params(policy), tasks, episodes_per_trial=3, generator=g, horizon=4)
        counts = torch.arange(1.0, 13.0).expand(2, 3, 12)
        assert torch.equal(batch.actions[..., 0], counts) and torch.equal(batch.actions[..., 1], counts)
        assert torch.equal(batch.episode_index, torch.tensor([0] * 4 + [1] * 4 + [2] * 4).expand(2, 3, 12))
        assert torch.equal(batch.mask, torch.ones(2, 3, 12))
        ends = torch.zeros(12, dtype=torch.bool)
        ends[[3, 7, 11]] = True
        assert torch.equal(batch.truncated, ends.expand(2, 3, 12)) and not batch.terminated.any()
        assert torch.equal(batch.dones, batch.truncated)
        assert batch.returns.shape == (2, 3, 3) and torch.equal(batch.lengths, torch.full((2, 3, 3), 4))
        # every episode restarts at the origin: the environment was reset, the carry was not
        assert torch.equal(batch.observations[:, :, [0, 4, 8]], torch.zeros(2, 3, 3, 2))


def test_inputs_hold_previous_action_reward_and_done_flag():
    env = make_batched("Navigation2D", num_tasks=1, episodes_per_task=1)
    policy = CountingPolicy()
    goal = (-0.4, 0.3)
    batch = sample_trials(env, policy, _params(policy), [NavigationTask(goal=goal)], episodes_per_trial=2,
                          generator=torch.Generator().manual_seed(0), horizon=3)
    # actions 1, 2, 3, 4, 5, 6 are clipped to 0.1: the robot moves by (0.1, 0.1) per step, and the
    # previous action is fed rescaled by the bounds [-0.1, 0.1]: 1.0
    reward = lambda k: -math.hypot(0.1 * k - goal[0], 0.1 * k - goal[1])  # after k steps of an episode
    expected = torch.tensor([
        # obs         previous action  previous reward  done
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # first step of the trial: zeros
        [0.1, 0.1, 1.0, 1.0, reward(1), 0.0],
        [0.2, 0.2, 1.0, 1.0, reward(2), 0.0],
        [0.0, 0.0, 1.0, 1.0, reward(3), 1.0],  # episode 2 starts: reset obs, last action/reward, done
        [0.1, 0.1, 1.0, 1.0, reward(1), 0.0],
        [0.2, 0.2, 1.0, 1.0, reward(2), 0.0],
    ])
    torch.testing.assert_close(batch.inputs[0, 0], expected)
    torch.testing.assert_close(batch.rewards[0, 0], torch.tensor([reward(k) for k in (1, 2, 3, 1, 2, 3)]))
    torch.testing.assert_close(batch.final_observations[0, 0], torch.full((2, 2), 0.3))
    assert torch.equal(batch.actions[0, 0, :, 0], torch.arange(1.0, 7.0))  # as sampled, not clipped


def test_terminated_episodes_wait_without_stepping_the_carry_and_are_packed():
    env = make_batched("Navigation2D", num_tasks=2, episodes_per_task=1)
    policy = CountingPolicy()
    tasks = [NavigationTask(goal=(0.2, 0.2)), NavigationTask(goal=(-0.4, 0.3))]  # task 0: reached in 2 steps
    batch = sample_trials(env, policy, _params(policy), tasks, episodes_per_trial=2,
                          generator=torch.Generator().manual_seed(0), horizon=5)
    assert batch.inputs.shape == (2, 1, 10, 6)
    # task 0: two episodes of 2 steps, packed at the start of the trial, then padding
    assert batch.mask[0, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert batch.episode_index[0, 0].tolist() == [0, 0, 1, 1, -1, -1, -1, -1, -1, -1]
    assert batch.terminated[0, 0].tolist() == [False, True, False, True] + [False] * 6
    assert not batch.truncated[0].any()
    assert batch.actions[0, 0, :, 0].tolist() == [1, 2, 3, 4, 0, 0, 0, 0, 0, 0]  # no count while waiting
    assert batch.inputs[0, 0, 2].tolist()[-1] == 1.0  # done flag after the terminal step
    for field in ("inputs", "observations", "actions", "rewards", "log_probs"):
        assert not getattr(batch, field)[0, 0, 4:].any(), field
    # task 1: two full episodes
    assert batch.mask[1, 0].tolist() == [1] * 10
    assert batch.actions[1, 0, :, 0].tolist() == list(range(1, 11))
    assert torch.equal(batch.lengths, torch.tensor([[[2, 2]], [[5, 5]]]))
    # the right-padding rule of metaops.rl holds: returns and GAE accept the mask as it is
    values = torch.zeros_like(batch.rewards)
    advantages = rl.gae(batch.rewards, values, gamma=1.0, gae_lambda=1.0, mask=batch.mask)
    torch.testing.assert_close(advantages[0, 0, 0], batch.rewards[0, 0].sum())  # over the whole trial


def test_episodes_start_from_seeded_states_drawn_from_the_generator():
    env = make_batched("HalfCheetahVel", num_tasks=2, episodes_per_task=2)
    policy = CountingPolicy(act_dim=env.action_dim)
    tasks = _tasks("HalfCheetahVel", 2)
    batch = sample_trials(env, policy, _params(policy), tasks, episodes_per_trial=3,
                          generator=torch.Generator().manual_seed(5), horizon=4)
    replica = torch.Generator().manual_seed(5)  # the counting policy draws no noise: only the seeds
    other = make_batched("HalfCheetahVel", num_tasks=2, episodes_per_task=2)
    for k in range(3):
        seeds = torch.randint(0, 2**31 - 1, (4,), generator=replica).numpy()
        start = torch.from_numpy(other.reset(tasks, seeds=seeds).astype(np.float32)).reshape(2, 2, -1)
        assert torch.equal(batch.observations[:, :, 4 * k], start), k
    assert not torch.equal(batch.observations[:, :, 0], batch.observations[:, :, 4])  # fresh seeds per episode
    env.close()
    other.close()


# --- determinism, per-task parameters, log-probabilities -----------------------------------------

def test_same_seed_same_batch_different_seed_different_batch():
    env = make_batched("HalfCheetahVel", num_tasks=2, episodes_per_task=2)
    policy = _gru(env)
    tasks = _tasks("HalfCheetahVel", 2)

    def run(seed):
        return sample_trials(env, policy, _params(policy), tasks, episodes_per_trial=2,
                             generator=torch.Generator().manual_seed(seed), horizon=6)

    first, again, other = run(0), run(0), run(1)
    _assert_equal(first, again)
    assert not torch.equal(first.actions, other.actions)
    env.close()


def test_per_task_params_equal_shared_params_when_identical():
    env = make_batched("Navigation2D", num_tasks=3, episodes_per_task=2)
    policy = _gru(env)
    tasks = _tasks("Navigation2D", 3)
    params = _params(policy)
    stacked = {k: torch.stack([v] * 3) for k, v in params.items()}
    run = lambda p: sample_trials(env, policy, p, tasks, episodes_per_trial=2,
                                  generator=torch.Generator().manual_seed(0), horizon=7)
    a, b = run(params), run(stacked)
    for field in FIELDS:
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-6)


def test_shares_of_a_batch_sample_what_the_whole_batch_call_samples():
    """Tasks 0..3 in one call equal rows 0..1 and 2..3 in two calls (a 2-process split), call after call."""
    tasks = _tasks("Navigation2D", 4)
    policy = _gru(make_batched("Navigation2D", num_tasks=1, episodes_per_task=1))

    def run(rows):
        g = torch.Generator().manual_seed(11)
        env = make_batched("Navigation2D", num_tasks=len(range(4)[rows]), episodes_per_task=2)
        shard = {} if rows == slice(None) else dict(task_rows=rows, batch_tasks=4)
        return [sample_trials(env, policy, _params(policy), tasks[rows], episodes_per_trial=2, generator=g,
                              horizon=7, **shard) for _ in range(2)]

    for whole, first, second in zip(run(slice(None)), run(slice(0, 2)), run(slice(2, 4))):
        for field in FIELDS:
            joined = torch.cat([getattr(first, field), getattr(second, field)])
            torch.testing.assert_close(getattr(whole, field), joined, rtol=1e-5, atol=1e-6, msg=field)
    env = make_batched("Navigation2D", num_tasks=4, episodes_per_task=2)
    with pytest.raises(ValueError, match="pass both"):
        sample_trials(env, policy, _params(policy), tasks, episodes_per_trial=2, generator=torch.Generator(),
                      batch_tasks=8)


def test_log_probs_recomputed_over_the_trial_equal_the_sampled_ones():
    env = make_batched("Navigation2D", num_tasks=3, episodes_per_task=2)
    policy = _gru(env, hidden=16)
    tasks = [NavigationTask(goal=(0.0, 0.05)), *_tasks("Navigation2D", 2)]  # task 0 may terminate early
    params = _params(policy)
    batch = sample_trials(env, policy, params, tasks, episodes_per_trial=3,
                          generator=torch.Generator().manual_seed(0), horizon=20)
    dist, _ = rl.unroll(policy, params, batch.inputs)
    log_probs = policy.log_prob(dist, batch.actions) * batch.mask
    torch.testing.assert_close(log_probs, batch.log_probs, rtol=1e-5, atol=1e-5)
    # per-task parameters under vmap give the same as a loop over tasks
    stacked = {k: v + 0.01 * torch.randn(3, *v.shape) for k, v in params.items()}
    vmapped = torch.func.vmap(lambda p, x: rl.unroll(policy, p, x)[0][0])(stacked, batch.inputs)
    looped = torch.stack([rl.unroll(policy, {k: v[i] for k, v in stacked.items()}, batch.inputs[i])[0][0]
                          for i in range(3)])
    torch.testing.assert_close(vmapped, looped)


def test_padding_fields_are_zero_and_mask_is_right_padded():
    env = make_batched("Navigation2D", num_tasks=4, episodes_per_task=2)
    policy = _gru(env)
    tasks = [NavigationTask(goal=(0.0, 0.0)), *_tasks("Navigation2D", 3)]  # goal at the start: 1-step episodes
    batch = sample_trials(env, policy, _params(policy), tasks, episodes_per_trial=2,
                          generator=torch.Generator().manual_seed(0), horizon=6)
    assert batch.mask[0].sum(-1).tolist() == [2.0, 2.0]
    real = batch.mask.bool()
    assert torch.equal(real, real.cummin(-1).values)  # 1...1 0...0
    assert torch.equal(batch.episode_index >= 0, real)
    for field in ("inputs", "observations", "actions"):
        assert not getattr(batch, field)[~real].any(), field
    for field in ("rewards", "log_probs", "terminated", "truncated"):
        assert not getattr(batch, field)[~real].any(), field
    assert torch.equal(batch.dones.sum(-1), torch.full((4, 2), 2))  # each episode ends exactly once


# --- errors ----------------------------------------------------------------------------------------

def test_bad_arguments_raise_clear_errors():
    env = make_batched("Navigation2D", num_tasks=2, episodes_per_task=1)
    policy = CountingPolicy()
    tasks = _tasks("Navigation2D", 2)
    g = torch.Generator().manual_seed(0)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="episodes_per_trial"):
            sample_trials(env, policy, _params(policy), tasks, episodes_per_trial=bad, generator=g)
    with pytest.raises(ValueError, match="horizon"):
        sample_trials(env, policy, _params(policy), tasks, episodes_per_trial=2, generator=g, horizon=0)
    with pytest.raises(ValueError, match="2 tasks, got 1"):
        sample_trials(env, policy, _params(policy), tasks[:1], episodes_per_trial=2, generator=g)
    with pytest.raises(TypeError, match="generator"):
        sample_trials(env, policy, _params(policy), tasks, episodes_per_trial=2, generator=0)
    with pytest.raises(ValueError, match="params has key"):
        sample_trials(env, policy, {"nope": torch.zeros(())}, tasks, episodes_per_trial=2, generator=g)
    gru = rl.GaussianGRUPolicy(5, 2, hidden_size=4)  # input_dim should be 2 + 2 + 2
    with pytest.raises(ValueError, match="obs_dim \\+ act_dim \\+ 2"):
        sample_trials(env, gru, _params(gru), tasks, episodes_per_trial=2, generator=g)


def test_non_finite_actions_name_task_trial_and_episode():
    env = make_batched("Navigation2D", num_tasks=2, episodes_per_task=2)
    policy = CountingPolicy(nan_at=5.0)  # the 5th step of the trial: step 1 of episode 1 (horizon 4)
    tasks = [NavigationTask(goal=(-0.4, 0.3))] * 2
    with pytest.raises(EnvError, match=r"task 0 \(NavigationTask.*episode 1: .*non-finite actions "
                                       r"\(trial 0, step 0 of episode 1 of the trial\)") as info:
        sample_trials(env, policy, _params(policy), tasks, episodes_per_trial=2,
                      generator=torch.Generator().manual_seed(0), horizon=4)
    assert (info.value.task_index, info.value.episode) == (0, 1)


class _Faulty(BatchedEnv):
    """A batched env whose environment `bad` returns NaN (or raises) at overall step `at`."""

    name = "Faulty"
    task_type = NavigationTask
    horizon = 3
    info_keys = ()
    observation_dim = 2
    action_low = np.full(2, -1.0, dtype=np.float32)
    action_high = np.full(2, 1.0, dtype=np.float32)

    def __init__(self, *, bad, at, mode):
        super().__init__(num_tasks=3, episodes_per_task=2)
        self.bad, self.at, self.mode, self.t = bad, at, mode, 0

    def _reset(self, tasks, seeds):
        return np.zeros((self.num_envs, 2))

    def _step(self, actions, active):
        self.t += 1
        obs = np.zeros((self.num_envs, 2))
        if self.t == self.at:
            if self.mode == "raise":
                raise self.error(self.bad, "the simulator crashed")
            obs[self.bad, 1] = np.nan
        return StepResult(obs, np.zeros(self.num_envs), np.zeros(self.num_envs, bool), {})


@pytest.mark.parametrize("mode", ["nan", "raise"])
def test_misbehaving_env_raises_naming_task_trial_and_episode(mode):
    env = _Faulty(bad=5, at=5, mode=mode)  # env 5 = task 2, trial 1; step 5 = step 1 of episode 1
    policy = CountingPolicy()
    tasks = _tasks("Navigation2D", 3)
    message = "non-finite observation" if mode == "nan" else "the simulator crashed"
    with pytest.raises(EnvError, match=rf"task 2 .*episode 1: Faulty: {message}.*\(trial 1, step 1 of episode 1 "
                                       r"of the trial\)") as info:
        sample_trials(env, policy, _params(policy), tasks, episodes_per_trial=2,
                      generator=torch.Generator().manual_seed(0))
    assert (info.value.task_index, info.value.episode, info.value.task) == (2, 1, tasks[2])


def test_policy_threads_are_restored():
    env = make_batched("Navigation2D", num_tasks=1, episodes_per_task=1)
    policy = CountingPolicy()
    before = torch.get_num_threads()
    sample_trials(env, policy, _params(policy), _tasks("Navigation2D", 1), episodes_per_trial=2,
                  generator=torch.Generator().manual_seed(0), horizon=3)
    assert torch.get_num_threads() == before
