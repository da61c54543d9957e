"""The task-batched episode sampler."""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from metaops.envs import (
    BatchedEnv,
    EnvError,
    EpisodeBatch,
    NavigationTask,
    StepResult,
    make_batched,
    sample_episodes,
    task_distribution,
)

FIELDS = ("observations", "final_observations", "actions", "rewards", "log_probs", "mask", "terminated", "truncated")


def _tasks(name, n, seed=0):
    return task_distribution(name).sample_tasks(n, generator=torch.Generator().manual_seed(seed))


def _params(policy):
    return {k: v.detach() for k, v in policy.named_parameters()}


def _stacked(params, num_tasks):
    return {k: torch.stack([v] * num_tasks) for k, v in params.items()}


def _assert_batches_equal(a: EpisodeBatch, b: EpisodeBatch):
    for field in FIELDS:
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.infos.keys() == b.infos.keys()
    for key in a.infos:
        assert torch.equal(a.infos[key], b.infos[key]), key
    assert a.tasks == b.tasks


@pytest.mark.parametrize("name", ["Navigation2D", "HalfCheetahVel", "AntDir"])
def test_batch_shapes_and_dtypes(name, make_policy):
    env = make_batched(name, num_tasks=3, episodes_per_task=2)
    policy = make_policy(env.observation_dim, env.action_dim)
    tasks = _tasks(name, 3)
    batch = sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator().manual_seed(0), horizon=7)
    d, a = env.observation_dim, env.action_dim
    assert batch.observations.shape == (3, 2, 7, d)
    assert batch.final_observations.shape == (3, 2, d)
    assert batch.actions.shape == (3, 2, 7, a)
    for field in ("rewards", "log_probs", "mask", "terminated", "truncated"):
        assert getattr(batch, field).shape == (3, 2, 7), field
    assert batch.observations.dtype == torch.float32 and batch.rewards.dtype == torch.float32
    assert batch.terminated.dtype == torch.bool
    assert set(batch.infos) == set(env.info_keys)
    assert all(v.shape == (3, 2, 7) for v in batch.infos.values())
    assert batch.tasks == tuple(tasks)
    assert batch.returns.shape == (3, 2) and batch.lengths.shape == (3, 2)
    assert torch.equal(batch.dones, batch.terminated | batch.truncated)
    # every episode ends exactly once: terminated, or truncated at the horizon
    assert torch.equal(batch.dones.sum(-1), torch.ones(3, 2, dtype=torch.int64))


def test_same_seed_same_batch_and_different_seed_different_batch(make_policy):
    env = make_batched("HalfCheetahVel", num_tasks=2, episodes_per_task=3)
    policy = make_policy(env.observation_dim, env.action_dim)
    tasks = _tasks("HalfCheetahVel", 2)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return sample_episodes(env, policy, _params(policy), tasks, generator=g, horizon=25)

    first, again, other = run(0), run(0), run(1)
    _assert_batches_equal(first, again)
    assert not torch.equal(first.observations, other.observations)
    # episodes of one task start from different seeded states
    assert not torch.equal(first.observations[0, 0, 0], first.observations[0, 1, 0])


def test_per_task_params_equal_shared_params_when_identical(make_policy):
    # (on navigation: vmapped and plain matmuls may differ in the last bit, which chaotic
    # MuJoCo dynamics would amplify over an episode)
    env = make_batched("Navigation2D", num_tasks=3, episodes_per_task=2)
    policy = make_policy(env.observation_dim, env.action_dim)
    tasks = _tasks("Navigation2D", 3)
    shared = _params(policy)
    a = sample_episodes(env, policy, shared, tasks, generator=torch.Generator().manual_seed(5), horizon=20)
    b = sample_episodes(
        env,
        policy,
        _stacked(shared, 3),
        tasks,
        generator=torch.Generator().manual_seed(5),
        horizon=20,
    )
    for field in FIELDS:
        torch.testing.assert_close(getattr(a, field), getattr(b, field), msg=field)


def test_each_task_uses_its_own_params(make_policy):
    """Per-task params steer each task's episodes (vmap over tasks, no mixing)."""
    env = make_batched("Navigation2D", num_tasks=2, episodes_per_task=3)
    policy = make_policy(2, 2, log_std=-20.0)  # (almost) deterministic actions
    params = _stacked(_params(policy), 2)
    params["body.2.weight"] = torch.zeros_like(params["body.2.weight"])
    params["body.2.bias"] = torch.tensor([[0.05, 0.0], [-0.5, 0.0]])  # task 1: beyond the bound
    tasks = [NavigationTask((0.9, 0.9)), NavigationTask((-0.9, -0.9))]
    batch = sample_episodes(env, policy, params, tasks, generator=torch.Generator().manual_seed(0), horizon=5)
    torch.testing.assert_close(batch.actions[0, :, :, 0], torch.full((3, 5), 0.05))
    # recorded actions are the sampled ones; the environment received them clipped to 0.1
    torch.testing.assert_close(batch.actions[1, :, :, 0], torch.full((3, 5), -0.5))
    torch.testing.assert_close(batch.observations[1, :, 2, 0], torch.full((3,), -0.2))
    torch.testing.assert_close(batch.observations[0, :, 2, 0], torch.full((3,), 0.1))


def test_log_probs_match_the_policy(make_policy):
    env = make_batched("HalfCheetahVel", num_tasks=2, episodes_per_task=2)
    policy = make_policy(env.observation_dim, env.action_dim, log_std=-0.5)
    params = _stacked(_params(policy), 2)
    params["body.2.bias"] = params["body.2.bias"] + torch.tensor([[0.3], [-0.3]])
    tasks = _tasks("HalfCheetahVel", 2)
    batch = sample_episodes(env, policy, params, tasks, generator=torch.Generator().manual_seed(0), horizon=10)
    for k in range(2):
        p = {name: value[k] for name, value in params.items()}
        dist = functional_call(policy, p, (batch.observations[k],))
        expected = policy.log_prob(dist, batch.actions[k])
        torch.testing.assert_close(batch.log_probs[k], expected)
    assert not batch.log_probs.requires_grad


def test_termination_masks_and_pads(make_policy):
    env = make_batched("Navigation2D", num_tasks=2, episodes_per_task=1)
    policy = make_policy(2, 2, log_std=-20.0)
    params = _params(policy)
    params["body.2.weight"] = torch.zeros_like(params["body.2.weight"])
    params["body.2.bias"] = torch.tensor([0.05, 0.0])
    tasks = [NavigationTask((0.1, 0.0)), NavigationTask((-0.4, 0.4))]
    batch = sample_episodes(env, policy, params, tasks, generator=torch.Generator().manual_seed(0), horizon=6)
    assert batch.mask[0, 0].tolist() == [1, 1, 0, 0, 0, 0]
    assert batch.terminated[0, 0].tolist() == [False, True, False, False, False, False]
    assert not batch.truncated[0, 0].any()
    assert batch.rewards[0, 0, 2:].abs().sum() == 0 and batch.observations[0, 0, 2:].abs().sum() == 0
    assert batch.mask[1, 0].tolist() == [1] * 6
    assert batch.truncated[1, 0].tolist() == [False] * 5 + [True]
    assert batch.lengths.tolist() == [[2], [6]]
    # the observation after the last real step: at the goal, and after 6 steps of 0.05
    torch.testing.assert_close(batch.final_observations[0, 0], torch.tensor([0.1, 0.0]))
    torch.testing.assert_close(batch.final_observations[1, 0], torch.tensor([0.3, 0.0]))


def test_bad_inputs_raise_clear_errors(make_policy):
    env = make_batched("Navigation2D", num_tasks=2, episodes_per_task=1)
    policy = make_policy(2, 2)
    params = _params(policy)
    tasks = _tasks("Navigation2D", 2)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="built for 2 tasks, got 1"):
        sample_episodes(env, policy, params, tasks[:1], generator=g)
    with pytest.raises(TypeError, match="torch.Generator"):
        sample_episodes(env, policy, params, tasks, generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="horizon"):
        sample_episodes(env, policy, params, tasks, generator=g, horizon=0)
    bad = dict(params, **{"body.0.bias": torch.zeros(3, 32)})
    with pytest.raises(ValueError, match=r"params\['body.0.bias'\] has shape \(3, 32\)"):
        sample_episodes(env, policy, bad, tasks, generator=g)
    mixed = dict(params, **{"body.0.bias": torch.zeros(2, 32)})
    with pytest.raises(ValueError, match="mix shared and per-task"):
        sample_episodes(env, policy, mixed, tasks, generator=g)
    with pytest.raises(ValueError, match="does not have"):
        sample_episodes(env, policy, {"weights": torch.zeros(2)}, tasks, generator=g)
    wrong_policy = make_policy(2, 3)
    with pytest.raises(ValueError, match=r"actions of shape \(2, 1, 3\), expected \(2, 1, 2\)"):
        sample_episodes(env, wrong_policy, _params(wrong_policy), tasks, generator=g)


def test_non_finite_actions_name_the_task_and_episode(make_policy):
    env = make_batched("Navigation2D", num_tasks=3, episodes_per_task=2)
    policy = make_policy(2, 2)
    params = _stacked(_params(policy), 3)
    params["body.2.bias"][2, 0] = float("nan")
    tasks = _tasks("Navigation2D", 3)
    with pytest.raises(EnvError, match=r"task 2 \(NavigationTask.*episode 0.*non-finite actions"):
        sample_episodes(env, policy, params, tasks, generator=torch.Generator().manual_seed(0))


class _Faulty(BatchedEnv):
    """A batched env whose environment `bad` returns NaN (or raises) at step `at`."""

    name = "Faulty"
    task_type = NavigationTask
    horizon = 10
    info_keys = ()
    observation_dim = 2
    action_low = np.full(2, -1.0, dtype=np.float32)
    action_high = np.full(2, 1.0, dtype=np.float32)

    def __init__(self, *, bad, at, mode):
        super().__init__(num_tasks=3, episodes_per_task=2)
        self.bad, self.at, self.mode, self.t = bad, at, mode, 0

    def _reset(self, tasks, seeds):
        self.t = 0
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
def test_misbehaving_env_raises_naming_task_and_episode(make_policy, mode):
    env = _Faulty(bad=5, at=3, mode=mode)
    policy = make_policy(2, 2)
    tasks = _tasks("Navigation2D", 3)
    message = "non-finite observation" if mode == "nan" else "the simulator crashed"
    with pytest.raises(EnvError, match=rf"task 2 .*episode 1: Faulty: {message}") as info:
        sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator().manual_seed(0))
    assert (info.value.task_index, info.value.episode, info.value.task) == (2, 1, tasks[2])


def test_policy_threads_are_restored(make_policy):
    env = make_batched("Navigation2D", num_tasks=1, episodes_per_task=1)
    policy = make_policy(2, 2)
    before = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    sample_episodes(env, policy, _params(policy), _tasks("Navigation2D", 1), generator=g)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="policy_threads"):
        sample_episodes(env, policy, _params(policy), _tasks("Navigation2D", 1), generator=g, policy_threads=0)
    assert torch.get_num_threads() == before


def test_works_with_metaops_rl_gaussian_policy():
    rl = pytest.importorskip("metaops.rl")
    env = make_batched("HalfCheetahDir", num_tasks=2, episodes_per_task=2)
    policy = rl.GaussianMLPPolicy(env.observation_dim, env.action_dim, hidden_sizes=(16, 16))
    params = _stacked(_params(policy), 2)
    batch = sample_episodes(
        env,
        policy,
        params,
        _tasks("HalfCheetahDir", 2),
        generator=torch.Generator().manual_seed(0),
        horizon=4,
    )
    assert batch.actions.shape == (2, 2, 4, 6)
    assert torch.isfinite(batch.log_probs).all()


@pytest.mark.slow
@pytest.mark.mujoco
def test_full_size_batch_is_deterministic():
    """40 tasks x 20 episodes x 200 steps of HalfCheetahVel with per-task params, twice."""
    rl = pytest.importorskip("metaops.rl")
    env = make_batched("HalfCheetahVel", num_tasks=40, episodes_per_task=20)
    policy = rl.GaussianMLPPolicy(env.observation_dim, env.action_dim)
    params = {
        k: v.detach() + 0.01 * torch.randn(40, *v.shape, generator=torch.Generator().manual_seed(1))
        for k, v in policy.named_parameters()
    }
    tasks = _tasks("HalfCheetahVel", 40)
    runs = [sample_episodes(env, policy, params, tasks, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    _assert_batches_equal(*runs)
    assert runs[0].rewards.shape == (40, 20, 200)
    assert torch.isfinite(runs[0].observations).all()


def test_float64_policy(make_policy):
    env = make_batched("Navigation2D", num_tasks=2, episodes_per_task=1)
    policy = make_policy(2, 2).double()
    batch = sample_episodes(
        env,
        policy,
        _params(policy),
        _tasks("Navigation2D", 2),
        generator=torch.Generator().manual_seed(0),
        horizon=3,
    )
    assert batch.observations.dtype == torch.float32 and torch.isfinite(batch.log_probs).all()



@pytest.mark.parametrize("per_task_params", [False, True])
def test_shares_of_a_batch_sample_what_the_whole_batch_call_samples(make_policy, per_task_params):
    """Tasks 0..3 in one call equal rows 0..1 and 2..3 in two calls (a 2-process split), call after call."""
    tasks = _tasks("Navigation2D", 4)
    policy = make_policy(2, 2, log_std=-1.0)
    shared = _params(policy)
    params = {k: v + 0.01 * torch.arange(4.0).view(4, *[1] * (v.dim() - 1)) for k, v in _stacked(shared, 4).items()}

    def run(rows, calls=2):  # two successive calls from one generator: the state after the first must agree too
        g = torch.Generator().manual_seed(7)
        env = make_batched("Navigation2D", num_tasks=len(range(4)[rows]), episodes_per_task=3)
        p = {k: v[rows] for k, v in params.items()} if per_task_params else shared
        shard = {} if rows == slice(None) else dict(task_rows=rows, batch_tasks=4)
        return [sample_episodes(env, policy, p, tasks[rows], generator=g, horizon=15, **shard) for _ in range(calls)]

    for whole, first, second in zip(run(slice(None)), run(slice(0, 2)), run(slice(2, 4))):
        for field in FIELDS:
            joined = torch.cat([getattr(first, field), getattr(second, field)])
            torch.testing.assert_close(getattr(whole, field), joined, msg=field, rtol=1e-5, atol=1e-6)


def test_a_share_runs_to_the_horizon_so_that_the_generator_stays_in_step(make_policy):
    """A share whose episodes all ended early still draws the noise of every step, as the whole batch does."""
    env = make_batched("HopperRandParams", num_tasks=1, episodes_per_task=2)
    policy = make_policy(env.observation_dim, env.action_dim, log_std=1.0)  # wild actions: Hopper falls early
    tasks = _tasks("HopperRandParams", 2)
    g, g_shard = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    plain = sample_episodes(env, policy, _params(policy), tasks[:1], generator=g, horizon=400)
    assert plain.lengths.max() < 400  # every episode terminated early, so the plain call stopped there
    shard = sample_episodes(env, policy, _params(policy), tasks[:1], generator=g_shard, horizon=400,
                            task_rows=slice(0, 1), batch_tasks=1)
    for field in FIELDS:
        assert torch.equal(getattr(plain, field), getattr(shard, field)), field
    assert not torch.equal(g.get_state(), g_shard.get_state())  # ... but the share drew all 400 steps' noise
    g_full = torch.Generator().manual_seed(0)
    torch.randint(0, 2**31 - 1, (2,), generator=g_full)
    for _ in range(400):
        torch.randn((1, 2, env.action_dim), generator=g_full)
    assert torch.equal(g_shard.get_state(), g_full.get_state())


def test_shares_are_checked(make_policy):
    env = make_batched("Navigation2D", num_tasks=2, episodes_per_task=1)
    policy = make_policy(2, 2)
    tasks = _tasks("Navigation2D", 2)
    call = lambda **kw: sample_episodes(env, policy, _params(policy), tasks, generator=torch.Generator(), **kw)
    with pytest.raises(ValueError, match="pass both"):
        call(task_rows=slice(0, 2))
    with pytest.raises(ValueError, match="does not hold the call's 2 tasks"):
        call(task_rows=slice(0, 3), batch_tasks=5)
    with pytest.raises(ValueError, match="does not hold"):
        call(task_rows=slice(4, 6), batch_tasks=5)
    with pytest.raises(ValueError, match="contiguous slice"):
        call(task_rows=[0, 1], batch_tasks=5)
