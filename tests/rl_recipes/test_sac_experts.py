"""SAC experts recipe: the vmapped update against a per-task loop, smoke runs of both modes, exact resumption,
demonstrations that GMPS trains on, bad input, and learning."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import metaops as mo
from metaops import envs, rl
from metaops.experiment import load_checkpoint, mean_confidence_interval
from recipes import gmps, sac_experts

ROOT = Path(__file__).resolve().parents[2]
TINY = sac_experts.Args(train_tasks=3, iterations=4, horizon=10, hidden=(8,), batch_size=6, learning_starts=5,
                        demo_episodes=2, eval_episodes=2, threads=1, progress=False, tensorboard=False,
                        checkpoint_every=1)
"""Navigation with 3 tasks, four 10-step episodes each and 8-unit networks: about a second per run."""


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in csv.DictReader(f)]


def _leaves(tree) -> dict[str, torch.Tensor]:
    return {"log_alpha": tree["log_alpha"], **{f"policy.{k}": v for k, v in tree["policy"].items()},
            **{f"critic.{k}": v for k, v in tree["critic"].items()}}


# --- one expert per task: the vmapped update equals a per-task loop ------------------------------------------


def test_vmapped_update_equals_a_per_task_loop_float64():
    """Three gradient steps (losses, Adam, Polyak) of three experts: one vmapped call each == three loops."""
    tasks, steps, batch_size, obs_dim, act_dim = 3, 3, 5, 3, 2
    env = envs.make_batched("Navigation2D", num_tasks=1, episodes_per_task=1)
    torch.manual_seed(0)
    policy, critic = sac_experts.make_networks(obs_dim, env, replace(TINY, hidden=(6,)))
    policy, critic = policy.double(), critic.double()
    params = mo.tree.tree_map(lambda v: v.double().detach().requires_grad_(),
                              sac_experts.init_params(policy, critic, tasks))
    params["log_alpha"] = (0.3 * torch.randn(tasks, dtype=torch.float64)).requires_grad_()
    target = mo.tree.tree_map(lambda v: (v + 0.1 * torch.randn_like(v)).detach(), params["critic"])
    g = torch.Generator().manual_seed(1)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    data = [(rl.Transitions(rand(tasks, batch_size, obs_dim), 0.1 * rand(tasks, batch_size, act_dim).tanh(),
                            rand(tasks, batch_size), rand(tasks, batch_size, obs_dim),
                            torch.rand(tasks, batch_size, generator=g) < 0.3),
             rand(tasks, batch_size, act_dim), rand(tasks, batch_size, act_dim)) for _ in range(steps)]
    initial = mo.tree.tree_map(lambda v: v.detach().clone(), params)

    optimizer = torch.optim.Adam(sac_experts.leaves(params), lr=1e-2)
    stacked_target = target
    for batch, noise, next_noise in data:
        stacked_target, aux = sac_experts.gradient_step(policy, critic, params, stacked_target, optimizer, batch, noise,
                                                        next_noise, gamma=0.9, tau=0.2, per_task=True)
    assert aux["critic_loss"].shape == (tasks,)

    for k in range(tasks):
        at = lambda tree, k=k: mo.tree.tree_map(lambda x: x[k], tree)
        own = mo.tree.tree_map(lambda v: v.clone().requires_grad_(), at(initial))
        own_optimizer = torch.optim.Adam(sac_experts.leaves(own), lr=1e-2)
        own_target = at(target)
        for batch, noise, next_noise in data:
            own_target, _ = sac_experts.gradient_step(policy, critic, own, own_target, own_optimizer,
                                                      rl.Transitions(*at(tuple(batch))), noise[k], next_noise[k],
                                                      gamma=0.9, tau=0.2, per_task=False)
        for name, value in _leaves(own).items():
            torch.testing.assert_close(_leaves(params)[name][k].detach(), value.detach(), rtol=1e-9, atol=1e-11,
                                       msg=name)
        for name, value in own_target.items():
            torch.testing.assert_close(stacked_target[name][k], value, rtol=1e-9, atol=1e-11, msg=name)
    moved = params["policy"]["mean_head.weight"] - initial["policy"]["mean_head.weight"]
    assert bool(moved.abs().amax(dim=(1, 2)).gt(0).all())  # every expert trained


def test_experts_start_different_and_conditioned_inputs_hold_the_task():
    env = envs.make_batched("Navigation2D", num_tasks=1, episodes_per_task=1)
    policy, critic = sac_experts.make_networks(2, env, TINY)
    params = sac_experts.init_params(policy, critic, 3)
    w = params["policy"]["mean_head.weight"]
    assert w.shape[0] == 3 and not torch.equal(w[0], w[1])
    tasks = [envs.NavigationTask(goal=(0.1, -0.2)), envs.NavigationTask(goal=(0.3, 0.4))]
    torch.testing.assert_close(sac_experts.task_features(tasks), torch.tensor([[0.1, -0.2], [0.3, 0.4]]))
    batch = rl.Transitions(torch.zeros(2, 4, 2), torch.zeros(2, 4, 2), torch.zeros(2, 4), torch.ones(2, 4, 2),
                           torch.zeros(2, 4, dtype=torch.bool))
    flat = sac_experts.network_batch(batch, sac_experts.task_features(tasks))
    assert flat.obs.shape == (8, 4) and flat.rewards.shape == (8,)
    assert flat.next_obs[5].tolist() == pytest.approx([1.0, 1.0, 0.3, 0.4])


def test_training_tasks_are_gmps_training_tasks(tmp_path):
    """The shared rule: for the same env, number and seed, the experts' tasks are the ones GMPS draws."""
    args = gmps.Args(train_tasks=5, demo_episodes=1, horizon=5, seed=3)
    drawn = gmps.training_demonstrations(args, tmp_path).tasks
    assert tuple(sac_experts.training_tasks("Navigation2D", 5, 3)) == drawn
    assert tuple(sac_experts.training_tasks("Navigation2D", 5, 4)) != drawn


# --- the recipe ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["per-task", "conditioned"])
def test_smoke_metrics_files_and_demonstrations(tmp_path, mode):
    metrics = sac_experts.main(replace(TINY, mode=mode, out_dir=str(tmp_path), tensorboard=True))
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    for name in ("config.json", "metrics.csv", "metrics.json", "checkpoint.pt", "learning_curve.png",
                 "demos/manifest.json", "demos/task_0002.npz"):
        assert (tmp_path / name).is_file(), name
    assert {f"expert_return_task_{i}" for i in range(3)} <= set(metrics)
    # cost: 3 tasks x 4 episodes of up to 10 steps (a copy that reaches its goal stops: env_steps counts the real
    # steps, the transitions stored); one gradient step per batch step after the 5 random ones
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert metrics["env_steps"] == int(ckpt["buffer"]["sizes"].sum()) == ckpt["env_steps"] <= 120
    assert ckpt["batch_steps"] == 4 * 10 and metrics["gradient_steps"] == 4 * 10 - 5
    assert metrics["expert_updates"] == metrics["gradient_steps"] * (3 if mode == "per-task" else 1)
    rows = _rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(float(v)) for r in rows for v in r.values())
    demos = envs.load_demonstrations(tmp_path / "demos")
    assert demos.tasks == tuple(sac_experts.training_tasks("Navigation2D", 3, TINY.seed))
    assert demos.actions.shape == (3, 2, 10, 2) and mode in demos.expert
    assert float(demos.actions.abs().max()) <= 0.1  # the experts' actions lie in the action box
    manifest = json.loads((tmp_path / "demos" / "manifest.json").read_text())
    assert manifest["env"] == "Navigation2D" and len(manifest["returns"]) == 3


def test_gmps_trains_on_the_experts_demonstrations(tmp_path):
    sac_experts.main(replace(TINY, out_dir=str(tmp_path / "experts")))
    metrics = gmps.main(gmps.Args(demos=str(tmp_path / "experts" / "demos"), out_dir=str(tmp_path / "gmps"),
                                  iterations=1, meta_batch=2, episodes=2, hidden=(8,), outer_steps=2, eval_tasks=0,
                                  progress=False, tensorboard=False))
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["expert_env_steps"] == envs.load_demonstrations(tmp_path / "experts" / "demos").env_steps


@pytest.mark.parametrize("mode", ["per-task", "conditioned"])
def test_resume_is_exact(tmp_path, mode):
    """4 iterations straight equal 2 iterations, then resumed to 4: parameters, targets, Adam, buffer, logs."""
    args = replace(TINY, mode=mode)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    expected = sac_experts.main(replace(args, out_dir=str(straight)))
    sac_experts.main(replace(args, out_dir=str(resumed), iterations=2))
    got = sac_experts.main(replace(args, out_dir=str(resumed)))
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    for name, value in _leaves(a["params"]).items():
        assert torch.equal(value, _leaves(b["params"])[name]), name
    for name, value in a["target"].items():
        assert torch.equal(value, b["target"][name]), name
    for name, value in a["buffer"]["storage"].items():
        assert torch.equal(value, b["buffer"]["storage"][name]), name
    assert torch.equal(a["generator"], b["generator"])
    assert torch.equal(a["buffer"]["generator"], b["buffer"]["generator"])
    assert _rows(straight) == _rows(resumed)
    same = {k for k in expected if "seconds" not in k and not k.startswith("ms_")}
    assert {k: expected[k] for k in same} == {k: got[k] for k in same}
    da, db = envs.load_demonstrations(straight / "demos"), envs.load_demonstrations(resumed / "demos")
    assert torch.equal(da.actions, db.actions) and torch.equal(da.observations, db.observations)


class _EndsEarly:
    """A batched environment whose copy k also terminates at the ``stops[k]``-th step of every episode.

    Its dynamics do not stop there: stepped on, a copy keeps moving, so a recipe that stored those steps would
    store transitions that follow a terminal state.
    """

    def __init__(self, env: envs.BatchedEnv, stops: list[int]) -> None:
        self.env, self.stops, self.t = env, np.asarray(stops), 0

    def __getattr__(self, name: str):
        return getattr(self.env, name)

    def reset(self, tasks, *, seeds):
        self.t = 0
        return self.env.reset(tasks, seeds=seeds)

    def step(self, actions, active):
        self.t += 1
        result = self.env.step(actions, active)
        return result._replace(terminated=result.terminated | ((self.t == self.stops) & active))


@pytest.mark.parametrize("mode", ["per-task", "conditioned"])
def test_no_transition_after_a_termination_is_stored(tmp_path, monkeypatch, mode):
    """Copies that terminate at steps 2, 4 and 6: each stores its episode up to its terminal step, no further."""
    stops = [2, 4, 6]
    real = envs.make_batched
    monkeypatch.setattr(envs, "make_batched", lambda *a, **kw: _EndsEarly(real(*a, **kw), stops))
    metrics = sac_experts.main(replace(TINY, mode=mode, out_dir=str(tmp_path)))
    buffer = load_checkpoint(tmp_path / "checkpoint.pt")["buffer"]
    storage, iterations = buffer["storage"], TINY.iterations
    assert buffer["sizes"].tolist() == [iterations * s for s in stops]  # (no wrap: the capacity is larger)
    for k, stop in enumerate(stops):
        size = iterations * stop
        obs, next_obs = storage["obs"][k, :size], storage["next_obs"][k, :size]
        terminated = storage["terminated"][k, :size]
        starts = (obs == 0).all(-1)  # navigation starts every episode at the origin
        assert terminated.tolist() == [(i + 1) % stop == 0 for i in range(size)], k  # the last of each episode
        assert starts.tolist() == [i % stop == 0 for i in range(size)], k  # ... is followed by a new episode
        follows = ~starts[1:]
        assert torch.equal(next_obs[:-1][follows], obs[1:][follows])  # consecutive within an episode
    # every counter counts real steps: 4 episodes of 2 + 4 + 6 steps; batch steps 6 per iteration, after 5 random
    assert metrics["env_steps"] == iterations * sum(stops)
    assert metrics["gradient_steps"] == iterations * max(stops) - TINY.learning_starts
    assert [int(float(r["env_steps"])) for r in _rows(tmp_path)] == [sum(stops) * (i + 1) for i in range(iterations)]


def test_resume_refuses_another_configuration(tmp_path):
    sac_experts.main(replace(TINY, out_dir=str(tmp_path), iterations=1))
    with pytest.raises(ValueError, match="lr"):
        sac_experts.main(replace(TINY, out_dir=str(tmp_path), lr=0.5))


def test_bad_arguments_raise(tmp_path):
    for overrides, message in [(dict(batch_size=0), "batch_size"), (dict(tau=1.5), "tau"),
                               (dict(gamma=1.5), "gamma"), (dict(learning_starts=-1), "learning_starts"),
                               (dict(horizon=0), "horizon"), (dict(train_tasks=0), "train_tasks"),
                               (dict(mode="conditioned", batch_size=2), "at least --train-tasks")]:
        with pytest.raises(ValueError, match=message):
            sac_experts.main(replace(TINY, out_dir=str(tmp_path), **overrides))
    assert not (tmp_path / "checkpoint.pt").exists()


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "recipes.sac_experts", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "--mode" in out and "{per-task,conditioned}" in out and "--train-tasks" in out


# --- learning ------------------------------------------------------------------------------------------------

LEARN = sac_experts.Args(train_tasks=4, iterations=20, hidden=(32, 32), batch_size=64, learning_starts=200,
                         demo_episodes=1, eval_episodes=2, threads=1, progress=False, tensorboard=False,
                         checkpoint_every=100)
"""Four navigation tasks, 2,000 environment steps and 1,800 gradient steps per expert (about 15 s per seed)."""


@pytest.mark.slow
def test_per_task_experts_learn_on_navigation(tmp_path):
    """Three seeds x 4 tasks, paired per task: each expert's deterministic return beats its initial policy's.

    The gain is measured on the same reset seeds before and after training; the 95% interval over the 12
    (seed, task) pairs must lie above zero and every seed's mean gain must be positive, so neither one lucky
    seed nor one lucky task can pass the test.
    """
    gains = []
    for seed in range(3):
        metrics = sac_experts.main(replace(LEARN, seed=seed, out_dir=str(tmp_path / str(seed))))
        gains.append(torch.tensor([metrics[f"expert_return_task_{i}"] - metrics[f"initial_return_task_{i}"]
                                   for i in range(LEARN.train_tasks)]))
    mean, ci = mean_confidence_interval(torch.cat(gains))
    per_seed = [round(g.mean().item(), 1) for g in gains]
    assert mean - ci > 0 and min(per_seed) > 0, (mean, ci, per_seed, [g.tolist() for g in gains])
