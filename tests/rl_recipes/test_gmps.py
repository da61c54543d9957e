"""GMPS recipe: smoke runs, exact resumption, demonstrations, the imitation loss, bad input, learning."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

import metaops as mo
from metaops import envs
from metaops.experiment import load_checkpoint, mean_confidence_interval
from recipes import gmps

ROOT = Path(__file__).resolve().parents[2]
TINY = gmps.Args(iterations=2, train_tasks=4, demo_episodes=2, meta_batch=2, episodes=2, horizon=8, hidden=(8,),
                 outer_steps=2, eval_tasks=0, threads=1, progress=False, tensorboard=False, checkpoint_every=1)
"""Navigation with 4 training tasks, 2 per iteration, two 8-step episodes each: well under a second per iteration."""


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in csv.DictReader(f)]


def test_smoke_metrics_finite_and_files_written(tmp_path):
    metrics = gmps.main(replace(TINY, out_dir=str(tmp_path), eval_tasks=2, eval_steps=2, tensorboard=True))
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    assert {"eval_return_0", "eval_gain_2", "demo_return", "expert_env_steps", "expert_seconds"} <= set(metrics)
    for name in ("config.json", "metrics.csv", "metrics.json", "checkpoint.pt", "learning_curve.png", "eval.csv",
                 "eval.md", "eval_tasks.csv", "eval.png", "demos/manifest.json", "demos/task_0003.npz"):
        assert (tmp_path / name).is_file(), name
    rows = _rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(v)) for r in rows for v in r.values())
    # meta-training samples only pre-update episodes: no post-update sampling, the expert's steps apart
    assert float(rows[-1]["env_steps"]) == metrics["env_steps"] <= 2 * 2 * 2 * 8
    assert metrics["expert_env_steps"] == envs.load_demonstrations(tmp_path / "demos").mask.sum().item()


@pytest.mark.parametrize("overrides", [dict(learn_inner_lr=False), dict(bias_transform=0), dict(demo_noise=0.0)],
                         ids=["fixed-inner-lr", "no-bias-transform", "noise-free-demos"])
def test_options_run(tmp_path, overrides):
    metrics = gmps.main(replace(TINY, out_dir=str(tmp_path), iterations=1, eval_tasks=2, eval_steps=1, **overrides))
    assert all(math.isfinite(v) for v in metrics.values()), metrics


def test_learned_inner_rates_receive_meta_gradients(tmp_path):
    gmps.main(replace(TINY, out_dir=str(tmp_path), learn_inner_lr=True, bias_transform=0, outer_lr=1e-2))
    rates = load_checkpoint(tmp_path / "checkpoint.pt")["inner_lrs"]
    assert set(rates) == {"mean_net.0.weight", "mean_net.0.bias", "mean_net.2.weight", "mean_net.2.bias", "log_std"}
    initial = {k: torch.full_like(v, TINY.inner_lr) for k, v in rates.items()}
    assert all(not torch.allclose(rates[k], initial[k]) for k in rates if k != "log_std")
    # the imitation loss sees only the adapted mean: the std's rate gets no meta-gradient
    assert torch.equal(rates["log_std"], initial["log_std"])
    assert float(_rows(tmp_path)[-1]["inner/lr_mean"]) != TINY.inner_lr


def test_resume_is_exact(tmp_path):
    """2 iterations, then resumed to 3, equals a straight 3-iteration run (learned rates, bias transformation)."""
    args = replace(TINY, iterations=3, learn_inner_lr=True, bias_transform=2)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    gmps.main(replace(args, out_dir=str(straight)))
    gmps.main(replace(args, out_dir=str(resumed), iterations=2))
    gmps.main(replace(args, out_dir=str(resumed)))
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    for name in a["policy"]:
        assert torch.equal(a["policy"][name], b["policy"][name]), name
    for name in a["inner_lrs"]:
        assert torch.equal(a["inner_lrs"][name], b["inner_lrs"][name]), name
    assert torch.equal(a["generator"], b["generator"])
    assert _rows(straight) == _rows(resumed)


def test_resume_refuses_another_configuration(tmp_path):
    gmps.main(replace(TINY, out_dir=str(tmp_path), iterations=1))
    with pytest.raises(ValueError, match="outer_lr"):
        gmps.main(replace(TINY, out_dir=str(tmp_path), outer_lr=0.5))


def test_given_demonstrations_fix_the_training_tasks(tmp_path):
    tasks = envs.task_distribution("Navigation2D").sample_tasks(3, generator=torch.Generator().manual_seed(9))
    demos = envs.collect_demonstrations("Navigation2D", tasks, envs.navigation_expert(tasks), episodes=2,
                                        generator=torch.Generator().manual_seed(9))
    path = envs.save_demonstrations(tmp_path / "mine", demos)
    metrics = gmps.main(replace(TINY, out_dir=str(tmp_path / "run"), demos=str(path), horizon=None))
    assert metrics["expert_env_steps"] == demos.env_steps
    assert not (tmp_path / "run" / "demos").exists()
    with pytest.raises(ValueError, match="exceeds the 3 training tasks"):
        gmps.main(replace(TINY, out_dir=str(tmp_path / "run2"), demos=str(path), meta_batch=4))


def test_behaviour_cloning_loss_by_hand():
    env = envs.make_batched("Navigation2D", num_tasks=1, episodes_per_task=1)
    policy = gmps.make_policy(env, replace(TINY, hidden=(4,), bias_transform=0))
    params = dict(policy.named_parameters())
    obs, actions = torch.randn(2, 3, 2), 0.1 * torch.rand(2, 3, 2)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    half_range = torch.full((2,), 0.1)
    loss = gmps.behaviour_cloning_loss(policy, params, obs, actions, mask, half_range)
    mean = policy(obs)[0]
    per_step = [((mean[e, t] - actions[e, t]) / 0.1).pow(2).sum() for e, t in [(0, 0), (0, 1), (1, 0)]]
    torch.testing.assert_close(loss, sum(per_step) / 3)


def test_bias_transformation_is_a_learned_input():
    env = envs.make_batched("Navigation2D", num_tasks=1, episodes_per_task=1)
    policy = gmps.make_policy(env, replace(TINY, bias_transform=3))
    with torch.no_grad():
        policy.bias_transform.copy_(torch.tensor([0.5, -1.0, 2.0]))
    obs = torch.randn(4, 2)
    expected = policy.base(torch.cat([obs, torch.tensor([0.5, -1.0, 2.0]).expand(4, 3)], -1))
    torch.testing.assert_close(policy(obs)[0], expected[0])
    # it is a parameter: the inner step adapts it
    loss = lambda p, b: sum(x.sum() for x in functional_call(policy, p, (b,)))
    adapted = mo.inner.adapt(loss, dict(policy.named_parameters()), obs, mo.inner.sgd(0.1), steps=1)
    assert not torch.equal(adapted["bias_transform"], policy.bias_transform)


@pytest.mark.parametrize("learn_inner_lr", [False, True], ids=["fixed-rate", "learned-rates"])
def test_inner_max_kl_bounds_the_logged_inner_step(tmp_path, learn_inner_lr):
    """The logged inner KL (the exact mean KL, at the updated meta-parameters) stays within the bound (set on
    the quadratic estimate) while the unbounded steps go 10x and more past it."""
    base = replace(TINY, learn_inner_lr=learn_inner_lr, inner_lr=0.5, iterations=2, eval_tasks=2, eval_steps=1)
    gmps.main(replace(base, out_dir=str(tmp_path / "free")))
    free = [float(r["inner/kl"]) for r in _rows(tmp_path / "free")]
    bound = min(free) / 10
    metrics = gmps.main(replace(base, out_dir=str(tmp_path / "bounded"), inner_max_kl=bound))
    bounded = [float(r["inner/kl"]) for r in _rows(tmp_path / "bounded")]
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert all(kl <= 1.1 * bound for kl in bounded), (bounded, bound, free)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="needs expert demonstrations"):
        gmps.main(replace(TINY, out_dir=str(tmp_path), env="HalfCheetahVel"))
    with pytest.raises(ValueError, match="outer_steps"):
        gmps.main(replace(TINY, out_dir=str(tmp_path), outer_steps=0))
    with pytest.raises(ValueError, match="inner_max_kl must be > 0"):
        gmps.main(replace(TINY, out_dir=str(tmp_path), inner_max_kl=0.0))
    with pytest.raises(ValueError, match="demo_noise"):
        gmps.main(replace(TINY, out_dir=str(tmp_path), demo_noise=-0.1))
    with pytest.raises(FileNotFoundError, match="not a demonstrations directory"):
        gmps.main(replace(TINY, out_dir=str(tmp_path), demos=str(tmp_path / "missing")))


def test_demonstrations_of_another_env_are_refused(tmp_path):
    tasks = envs.task_distribution("HalfCheetahVel").sample_tasks(2, generator=torch.Generator().manual_seed(0))
    demos = envs.collect_demonstrations("HalfCheetahVel", tasks, lambda obs: torch.zeros(*obs.shape[:-1], 6),
                                        episodes=1, horizon=4, generator=torch.Generator().manual_seed(0))
    path = envs.save_demonstrations(tmp_path / "cheetah", demos)
    with pytest.raises(ValueError, match="not --env 'Navigation2D'"):
        gmps.main(replace(TINY, out_dir=str(tmp_path / "run"), demos=str(path)))


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "recipes.gmps", "--help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "--demos" in out and "--learn-inner-lr" in out and "--bias-transform" in out


# --- learning ------------------------------------------------------------------------------------

LEARN = gmps.Args(iterations=10, meta_batch=10, episodes=10, hidden=(32, 32), outer_steps=20, eval_tasks=20,
                  eval_steps=1, threads=1, progress=False, tensorboard=False)
"""Ten meta-iterations of 10 tasks x 10 navigation episodes (at most 100k environment steps)."""


@pytest.mark.slow
def test_learns_on_navigation(tmp_path):
    """Three seeds x 20 held-out tasks, paired per task: the adapted policy beats the pre-update one, and
    meta-training made adaptation help more than it does for the untrained policy.

    Each statistic compares returns on the same tasks; each has a 95% interval above zero and
    every seed's mean agrees in sign, so no single seed's luck can pass the test.
    """
    stats: dict[str, list[torch.Tensor]] = {"adaptation gain": [], "adaptation gain vs untrained": []}
    for seed in range(3):
        args = replace(LEARN, seed=seed, out_dir=str(tmp_path / str(seed)))
        gmps.main(args)
        with open(tmp_path / str(seed) / "eval_tasks.csv", newline="") as f:
            trained = torch.tensor([[float(r["return_0"]), float(r["return_1"])] for r in csv.DictReader(f)]).T
        torch.manual_seed(seed)  # the recipe's initial policy
        untrained_policy = gmps.make_policy(envs.make_batched("Navigation2D", num_tasks=1, episodes_per_task=1), args)
        untrained = gmps.evaluate(untrained_policy, None, args, num_tasks=20, steps=1, seed=args.eval_seed,
                                  horizon=100)
        stats["adaptation gain"].append(trained[1] - trained[0])
        stats["adaptation gain vs untrained"].append((trained[1] - trained[0]) - (untrained[1] - untrained[0]))
    summary = {name: (*mean_confidence_interval(torch.cat(v)), [round(g.mean().item(), 2) for g in v])
               for name, v in stats.items()}
    for name, (mean, ci, per_seed) in summary.items():
        assert mean - ci > 0 and min(per_seed) > 0, (name, summary)
