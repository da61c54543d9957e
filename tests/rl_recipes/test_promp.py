"""ProMP recipe: smoke runs on every task family, exact resumption, CLI, objective pieces, learning."""

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
from metaops import envs, estimators
from metaops.experiment import load_checkpoint, mean_confidence_interval, save_checkpoint
from recipes import promp

ROOT = Path(__file__).resolve().parents[2]
TINY = promp.Args(env="Navigation2D", iterations=2, meta_batch=2, episodes=2, horizon=8, hidden=(8,), outer_steps=2,
                  eval_tasks=0, threads=1, progress=False, tensorboard=False, checkpoint_every=1)
"""Navigation with two tasks, two 8-step episodes each and an 8-unit policy: well under a second per iteration."""


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in csv.DictReader(f)]


def test_smoke_metrics_finite_and_files_written(tmp_path):
    metrics = promp.main(replace(TINY, out_dir=str(tmp_path), eval_tasks=2, eval_steps=2, tensorboard=True))
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    assert {"eval_return_0", "eval_return_2_ci95", "eval_gain_1", "eval_gain_2_ci95", "env_steps"} <= set(metrics)
    for name in ("config.json", "metrics.csv", "metrics.json", "checkpoint.pt", "learning_curve.png", "eval.csv",
                 "eval.md", "eval_tasks.csv", "eval.png"):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tensorboard").iterdir())
    rows = _rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(v)) for r in rows for v in r.values())
    assert all(float(r["kl/inner"]) >= 0 and float(r["kl/outer"]) >= 0 for r in rows)
    assert float(rows[-1]["env_steps"]) == metrics["env_steps"] <= 2 * 2 * 2 * 2 * 8  # (pre + post) x tasks x ...
    assert len((tmp_path / "eval_tasks.csv").read_text().splitlines()) == 1 + 2  # header + one row per task


def test_resume_is_exact(tmp_path):
    """2 iterations, then resumed to 3, equals a straight 3-iteration run (2 inner steps, adaptive KL)."""
    args = replace(TINY, iterations=3, inner_steps=2, kl_target=1e-4)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    promp.main(replace(args, out_dir=str(straight)))
    promp.main(replace(args, out_dir=str(resumed), iterations=2))
    promp.main(replace(args, out_dir=str(resumed)))  # resumes from the iteration-2 checkpoint
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 3
    for name, value in a["policy"].items():
        assert torch.equal(value, b["policy"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name)
    assert torch.equal(a["kl_coeffs"], b["kl_coeffs"]) and a["kl_coeffs"].shape == (2,)
    assert not torch.equal(a["kl_coeffs"], torch.full((2,), promp.REFERENCE["Navigation2D"]["kl_coeff"],
                                                      dtype=torch.float64))  # the adaptive rule acted
    assert torch.equal(a["generator"], b["generator"])
    assert _rows(straight) == _rows(resumed)


@pytest.mark.parametrize("outer_steps", [1, 3])
def test_outer_kl_guard_undoes_a_step_that_moves_too_far(tmp_path, outer_steps):
    """A bound below any real step undoes the first step of every iteration, whether it is found at the next
    step's forward pass (3 steps) or in the statistics after the last (1 step): the policy stays at its
    initialisation, Adam's state is unchanged, and the CSV says 0 steps were kept. A loose bound never acts: the
    run equals the unguarded one exactly."""
    args = replace(TINY, outer_steps=outer_steps)
    tight, loose, unguarded = (tmp_path / name for name in ("tight", "loose", "none"))
    promp.main(replace(args, out_dir=str(tight), outer_max_kl=1e-30))
    promp.main(replace(args, out_dir=str(loose), outer_max_kl=1e6))
    promp.main(replace(args, out_dir=str(unguarded), outer_max_kl=None))
    torch.manual_seed(TINY.seed)  # the recipe's initial policy
    initial = promp.make_policy(envs.make_batched("Navigation2D", num_tasks=1, episodes_per_task=1), TINY.hidden)
    kept = load_checkpoint(tight / "checkpoint.pt")
    for name, value in initial.state_dict().items():
        assert torch.equal(kept["policy"][name], value), name
    assert kept["optimizer"]["state"] == {}  # Adam's state is undone with the step
    assert [float(r["outer/steps"]) for r in _rows(tight)] == [0, 0]
    assert all(float(r["kl/outer"]) == 0.0 for r in _rows(tight))  # statistics of the kept (initial) policy
    a, b = load_checkpoint(loose / "checkpoint.pt"), load_checkpoint(unguarded / "checkpoint.pt")
    for name, value in a["policy"].items():
        assert torch.equal(value, b["policy"][name]), name
        assert not torch.equal(value, kept["policy"][name]) or "log_std" in name, name  # it did train
    assert _rows(loose) == _rows(unguarded)
    assert [float(r["outer/steps"]) for r in _rows(loose)] == [outer_steps] * 2


def test_action_units_keep_the_std_and_scale_the_inner_step():
    """The std is a fraction of the half-range in any units; an SGD step on the mean moves the mean (1/L)^2 as
    far in units L, so rllab's [-1, 1] (the MAML paper's) moves it 100x as far as the reference code's [-10, 10]."""
    env = envs.make_batched("Navigation2D", num_tasks=1, episodes_per_task=1)
    half_range = float(env.action_high[0] - env.action_low[0]) / 2
    action, obs, lr = torch.tensor([[0.05, -0.02]]), torch.zeros(1, env.observation_dim), 1e-6
    moved = {}
    for units in (1.0, 10.0):
        torch.manual_seed(0)
        policy = promp.make_policy(env, (8,), init_std=0.5, action_units=units)
        mean, log_std = policy(obs)
        assert torch.allclose(log_std.exp(), torch.full_like(log_std, 0.5 * half_range))
        params = dict(policy.named_parameters())
        step = lambda p: policy.log_prob(functional_call(policy, p, (obs,)), action).sum()
        grads = torch.func.grad(step)(params)
        new_mean = functional_call(policy, {k: v + lr * grads[k] for k, v in params.items()}, (obs,))[0]
        moved[units] = (new_mean - mean).detach()
    assert torch.allclose(moved[1.0], 100 * moved[10.0], rtol=1e-3)


def test_a_checkpoint_from_before_the_guard_resumes_unguarded(tmp_path):
    """A checkpoint written before outer_max_kl and action_units existed ran unguarded in the reference units: it
    resumes with --outer-max-kl None, and the default guard is refused with a message that names the field."""
    promp.main(replace(TINY, out_dir=str(tmp_path), iterations=1))
    path = tmp_path / "checkpoint.pt"
    old = load_checkpoint(path)
    for field in promp.ADDED_FIELDS:
        del old["config"][field]
    save_checkpoint(path, old)
    with pytest.raises(ValueError, match=r"outer_max_kl: None \(checkpoint\) != 1.0 \(now\)"):
        promp.main(replace(TINY, out_dir=str(tmp_path), iterations=2))
    metrics = promp.main(replace(TINY, out_dir=str(tmp_path), iterations=2, outer_max_kl=None))
    assert load_checkpoint(path)["iteration"] == 2 and math.isfinite(metrics["return_post_last10"])


def test_resume_refuses_another_configuration(tmp_path):
    promp.main(replace(TINY, out_dir=str(tmp_path), iterations=1))
    with pytest.raises(ValueError, match="clip"):
        promp.main(replace(TINY, out_dir=str(tmp_path), clip=0.2))


@pytest.mark.parametrize("env", envs.env_names())
def test_every_registered_family_runs(tmp_path, env):
    metrics = promp.main(replace(TINY, env=env, out_dir=str(tmp_path), iterations=1, horizon=4, inner_steps=1))
    assert all(math.isfinite(v) for v in metrics.values()), metrics


def test_reference_settings_per_family():
    assert set(promp.REFERENCE) == set(envs.env_names())
    default = promp.resolve(promp.Args())
    assert (default.env, default.meta_batch, default.episodes, default.horizon) == ("HalfCheetahDir", 40, 20, 100)
    assert (default.inner_steps, default.inner_lr, default.outer_steps, default.outer_lr) == (1, 0.1, 5, 1e-3)
    assert (default.clip, default.kl_coeff, default.kl_target, default.hidden) == (0.3, 5e-4, 0.0, (64, 64))
    assert promp.resolve(promp.Args(env="AntGoal")).inner_steps == 2
    hopper = promp.resolve(promp.Args(env="HopperRandParams"))
    assert (hopper.horizon, hopper.inner_lr, hopper.outer_steps, hopper.kl_coeff, hopper.kl_target) == (
        200, 0.05, 3, 1e-3, 0.01)
    assert promp.resolve(promp.Args(env="AntGoal", inner_steps=1, horizon=50)).inner_steps == 1  # explicit wins


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="outer_steps"):
        promp.main(replace(TINY, out_dir=str(tmp_path), outer_steps=0))
    with pytest.raises(ValueError, match="kl_coeff"):
        promp.main(replace(TINY, out_dir=str(tmp_path), kl_coeff=-1.0))
    with pytest.raises(ValueError, match="eval_tasks"):
        promp.main(replace(TINY, out_dir=str(tmp_path), eval_tasks=1))
    with pytest.raises(ValueError, match="unknown env"):
        promp.main(replace(TINY, out_dir=str(tmp_path), env="Pendulum"))
    with pytest.raises(ValueError, match="eval_episodes"):
        promp.main(replace(TINY, out_dir=str(tmp_path), eval_episodes=0))
    with pytest.raises(ValueError, match="outer_max_kl"):
        promp.main(replace(TINY, out_dir=str(tmp_path), outer_max_kl=0.0))
    for bad in [(), (0.1, 0.0), (float("nan"),)]:
        with pytest.raises(ValueError, match="eval_inner_lr"):
            promp.main(replace(TINY, out_dir=str(tmp_path), eval_inner_lr=bad))


def test_evaluation_step_size_schedule():
    """eval_inner_lr sets the test-time step sizes: the training's step size given explicitly is the default
    evaluation; another first step size changes the returns after the first step and not before it."""
    args = promp.resolve(TINY)
    torch.manual_seed(0)
    policy = promp.make_policy(envs.make_batched("Navigation2D", num_tasks=1, episodes_per_task=1), args.hidden)
    evaluate = lambda a: promp.evaluate(policy, a, num_tasks=3, steps=2, seed=5)
    default = evaluate(args)
    assert torch.equal(evaluate(replace(args, eval_inner_lr=(args.inner_lr,))), default)
    scheduled = evaluate(replace(args, eval_inner_lr=(20 * args.inner_lr, args.inner_lr)))
    assert torch.equal(scheduled[0], default[0])
    assert not torch.allclose(scheduled[1], default[1])


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "recipes.promp", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--out-dir", "--inner-steps", "--outer-steps", "--kl-target", "--clip", "HalfCheetahDir"):
        assert option in result.stdout, option


# --- the objective pieces the recipe composes ----------------------------------------------------

def test_adaptive_kl_rule_per_inner_step():
    """Halve below target/1.5, double above 1.5 x target, keep inside the band; each step on its own."""
    coeffs = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    kls = torch.tensor([0.001, 0.0066, 0.01, 0.0149, 0.02], dtype=torch.float64)
    new = promp.adapt_kl_coeffs(coeffs, kls, target=0.01)
    assert new.tolist() == [0.5, 0.5, 1.0, 1.0, 2.0]
    edges = promp.adapt_kl_coeffs(torch.ones(2), torch.tensor([0.01 / 1.5, 0.015]), target=0.01)
    assert edges.tolist() == [1.0, 1.0]  # strict inequalities, as in the reference
    assert promp.adapt_kl_coeffs(torch.tensor([4.0, 4.0]), torch.tensor([1.0, 0.0]), target=0.1).tolist() == [8.0, 2.0]


def _tiny_task(dtype=torch.float64):
    torch.manual_seed(0)
    env = envs.make_batched("Navigation2D", num_tasks=1, episodes_per_task=1)
    policy = promp.make_policy(env, (8,)).to(dtype)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    obs, actions = torch.randn(3, 6, 2, dtype=dtype), torch.randn(3, 6, 2, dtype=dtype)
    advantages, mask = torch.randn(3, 6, dtype=dtype), torch.ones(3, 6, dtype=dtype)
    mask[1, 4:] = 0
    return policy, theta, obs, actions, advantages, mask


def test_inner_step_equals_lvc_at_the_sampling_policy():
    """At theta = the sampling parameters, the importance-weighted inner loss is LVC: same value, step, meta-grad."""
    policy, theta, obs, actions, advantages, mask = _tiny_task()
    log_probs = lambda p: policy.log_prob(torch.func.functional_call(policy, p, (obs,)), actions)
    sampling_log_probs = log_probs(theta).detach()
    promp_loss = promp.make_inner_loss(policy)[0]
    lvc_loss = lambda p, b: -estimators.lvc_objective(log_probs(p), advantages, mask=mask).sum() / mask.sum()
    batch = (obs, actions, advantages, mask, sampling_log_probs)
    torch.testing.assert_close(promp_loss(theta, batch), lvc_loss(theta, batch))

    def meta(loss_fn):  # adapted params and the meta-gradient of a post-update loss through the step
        adapted = lambda th: mo.inner.adapt(loss_fn, th, batch, mo.inner.sgd(0.5), steps=1)
        post = lambda th: -(log_probs(adapted(th)) * advantages.flip(-1) * mask).sum()
        return adapted(theta), torch.func.grad(post)(theta)

    (a_promp, g_promp), (a_lvc, g_lvc) = meta(promp_loss), meta(lvc_loss)
    for name in theta:
        torch.testing.assert_close(a_promp[name], a_lvc[name])
        torch.testing.assert_close(g_promp[name], g_lvc[name])


def test_inner_step_is_importance_weighted_away_from_the_sampling_policy():
    """After theta moved, the inner gradient is the likelihood-ratio gradient pi_theta / pi_sampling x A."""
    policy, theta, obs, actions, advantages, mask = _tiny_task()
    log_probs = lambda p: policy.log_prob(torch.func.functional_call(policy, p, (obs,)), actions)
    sampling_log_probs = log_probs(theta).detach()
    moved = {k: v + 0.05 * torch.randn_like(v) for k, v in theta.items()}
    batch = (obs, actions, advantages, mask, sampling_log_probs)
    grads = torch.func.grad(promp.make_inner_loss(policy)[0])(moved, batch)
    ratio = (log_probs(moved) - sampling_log_probs).exp().detach()
    expected = torch.func.grad(lambda p: -(ratio * log_probs(p) * advantages * mask).sum() / mask.sum())(moved)
    on_policy = torch.func.grad(lambda p: -(log_probs(p) * advantages * mask).sum() / mask.sum())(moved)
    for name in theta:
        torch.testing.assert_close(grads[name], expected[name])
    assert any(not torch.allclose(grads[k], on_policy[k]) for k in theta)  # the weights matter


def test_inner_step_with_kl_equals_the_step_and_the_kl_computed_apart():
    """loss_and_kl shares one forward pass between the inner step and the inner KL: same values, same meta-gradient."""
    policy, theta, obs, _, advantages, mask = _tiny_task()
    moved = {k: v + 0.05 * torch.randn_like(v) for k, v in theta.items()}
    with torch.no_grad():
        old_dist = torch.func.functional_call(policy, moved, (obs,))  # the sampling policy's distributions
    actions = old_dist[0] + old_dist[1].exp() * torch.randn_like(old_dist[0])  # sampled by it
    log_probs = lambda p: policy.log_prob(torch.func.functional_call(policy, p, (obs,)), actions)
    batch = (obs, actions, advantages, mask, log_probs(moved).detach())
    loss_fn, loss_and_kl = promp.make_inner_loss(policy)

    def fused(th):
        phi, kl = mo.inner.adapt(loss_and_kl, th, (batch, old_dist), mo.inner.sgd(0.5), steps=1, has_aux=True)
        return -(log_probs(phi) * advantages.flip(-1) * mask).sum() + 3.0 * kl[0]

    def apart(th):  # the KL on its own forward pass, a closed form of two diagonal Gaussians, and the plain step
        mean, log_std = torch.func.functional_call(policy, th, (obs,))  # (mean, log-std) in action units
        std, old_mean, old_std = log_std.exp(), old_dist[0], old_dist[1].exp()
        kl = (torch.log(std / old_std) + (old_std**2 + (old_mean - mean) ** 2) / (2 * std**2) - 0.5).sum(-1)
        phi = mo.inner.adapt(loss_fn, th, batch, mo.inner.sgd(0.5), steps=1)
        return -(log_probs(phi) * advantages.flip(-1) * mask).sum() + 3.0 * (kl * mask).sum() / mask.sum()

    torch.testing.assert_close(fused(theta), apart(theta))
    g_fused, g_apart = torch.func.grad(fused)(theta), torch.func.grad(apart)(theta)
    for name in theta:
        torch.testing.assert_close(g_fused[name], g_apart[name])


# --- learning ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_learns_on_navigation(tmp_path):
    """Three seeds x 20 held-out tasks, paired per task: adaptation helps, and meta-training made it help more.

    Pooled over the 3 x 20 held-out tasks, each statistic compares returns on the same tasks:
    the post-update minus pre-update return of the trained meta-policy, its post-update return
    minus the one of the untrained initial policy (same seed, same evaluation), and its
    adaptation gain minus the untrained policy's. Each has a 95% interval above zero, and every
    seed's mean agrees in sign: no single seed's luck can pass the test.
    """
    stats: dict[str, list[torch.Tensor]] = {"adaptation gain": [], "post-update vs untrained": [],
                                            "adaptation gain vs untrained": []}
    for seed in range(3):
        args = promp.Args(env="Navigation2D", seed=seed, iterations=25, meta_batch=10, episodes=10, hidden=(32, 32),
                          eval_tasks=20, eval_steps=1, threads=1, out_dir=str(tmp_path / str(seed)), progress=False,
                          tensorboard=False)
        promp.main(args)
        with open(tmp_path / str(seed) / "eval_tasks.csv", newline="") as f:
            trained = torch.tensor([[float(r["return_0"]), float(r["return_1"])] for r in csv.DictReader(f)]).T
        torch.manual_seed(seed)  # the recipe's initial policy
        untrained_policy = promp.make_policy(envs.make_batched("Navigation2D", num_tasks=1, episodes_per_task=1),
                                             args.hidden)
        resolved = promp.resolve(args)
        untrained = promp.evaluate(untrained_policy, resolved, num_tasks=20, steps=1, seed=resolved.eval_seed)
        stats["adaptation gain"].append(trained[1] - trained[0])
        stats["post-update vs untrained"].append(trained[1] - untrained[1])
        stats["adaptation gain vs untrained"].append((trained[1] - trained[0]) - (untrained[1] - untrained[0]))
    summary = {name: (*mean_confidence_interval(torch.cat(v)), [round(g.mean().item(), 2) for g in v])
               for name, v in stats.items()}
    print(summary)  # shown with -s: the figures quoted on the recipe's docs page
    for name, (mean, ci, per_seed) in summary.items():
        assert mean - ci > 0 and min(per_seed) > 0, (name, summary)
