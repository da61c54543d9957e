"""MAML-TRPO recipe: smoke runs, exact resumption, the evaluation entry point, CLI, learning."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import metaops as mo
from metaops import envs
from metaops.experiment import load_checkpoint
from recipes import maml_trpo, maml_trpo_eval

ROOT = Path(__file__).resolve().parents[2]
TINY = maml_trpo.Args(iterations=2, meta_batch=2, episodes=2, horizon=8, hidden=(8,), eval_tasks=0,
                      progress=False, tensorboard=False, checkpoint_every=1)
"""Navigation with two tasks, two 8-step episodes each and an 8-unit policy: seconds per iteration."""


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The recipe sets torch's thread count (Args.threads); give other tests back the default."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    out = tmp_path_factory.mktemp("maml_trpo")
    metrics = maml_trpo.main(replace(TINY, out_dir=str(out), eval_tasks=2, eval_steps=1, tensorboard=True))
    return out, metrics


def test_smoke_metrics_finite_and_files_written(tiny_run):
    out, metrics = tiny_run
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    assert {"eval_return_0", "eval_return_1", "return_post_last10", "env_steps"} <= set(metrics)
    for name in ("config.json", "metrics.csv", "metrics.json", "checkpoint.pt", "learning_curve.png",
                 "eval.csv", "eval.md", "eval.png"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(v)) for r in rows for v in r.values())
    assert all(0 <= float(r["trpo/kl"]) <= TINY.max_kl for r in rows)
    assert json.loads((out / "metrics.json").read_text()).keys() == metrics.keys()
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "overrides",
    [dict(estimator="lvc", inner_steps=2), dict(estimator="score-function"), dict(first_order=True)],
    ids=["lvc-2-steps", "score-function", "first-order"],
)
def test_other_estimators_and_inner_steps_run(tmp_path, overrides):
    metrics = maml_trpo.main(replace(TINY, out_dir=str(tmp_path), iterations=1, **overrides))
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    # inner_steps=2 samples pre-update episodes twice per iteration: 2 x pre + post
    expected_batches = overrides.get("inner_steps", 1) + 1
    assert metrics["env_steps"] <= expected_batches * TINY.meta_batch * TINY.episodes * TINY.horizon


def test_estimators_share_the_inner_step_but_not_its_curvature():
    """Same adapted params for every estimator; the meta-gradients differ as the docs table says."""
    torch.manual_seed(0)
    env = envs.make_batched("Navigation2D", num_tasks=1, episodes_per_task=1)
    policy = maml_trpo.make_policy(env, (8,)).double()
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    obs, actions = torch.randn(3, 6, 2, dtype=torch.float64), torch.randn(3, 6, 2, dtype=torch.float64)
    advantages, mask = torch.randn(3, 6, dtype=torch.float64), torch.ones(3, 6, dtype=torch.float64)
    batch = (obs, actions, advantages, mask)

    def outer(estimator, decay=1.0):
        loss_fn = maml_trpo.make_inner_loss(policy, estimator, dice_decay=decay)
        adapted = lambda th: mo.inner.adapt(loss_fn, th, batch, mo.inner.sgd(0.5), steps=1)
        post_loss = lambda th: loss_fn(adapted(th), (obs + 1, actions, advantages.flip(-1), mask))
        return adapted(theta), torch.func.grad(post_loss)(theta)

    (a_dice, g_dice), (a_lvc, g_lvc) = outer("dice"), outer("lvc")
    (a_sf, g_sf), (_, g_dice0) = outer("score-function"), outer("dice", decay=0.0)
    for name in theta:
        torch.testing.assert_close(a_dice[name], a_sf[name])
        torch.testing.assert_close(a_lvc[name], a_sf[name])
        torch.testing.assert_close(g_dice0[name], g_lvc[name])  # Loaded DiCE with decay 0 == LVC
    differs = lambda g, h: any(not torch.allclose(g[k], h[k]) for k in g)
    assert differs(g_dice, g_lvc) and differs(g_lvc, g_sf) and differs(g_dice, g_sf)


def test_resume_is_exact(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    maml_trpo.main(replace(TINY, out_dir=str(straight)))
    maml_trpo.main(replace(TINY, out_dir=str(resumed), iterations=1))
    maml_trpo.main(replace(TINY, out_dir=str(resumed)))  # resumes from the iteration-1 checkpoint
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 2
    for name, value in a["policy"].items():
        assert torch.equal(value, b["policy"][name]), name
    assert torch.equal(a["generator"], b["generator"])
    assert _rows(straight) == _rows(resumed)


def test_resume_refuses_another_configuration(tmp_path):
    maml_trpo.main(replace(TINY, out_dir=str(tmp_path), iterations=1))
    with pytest.raises(ValueError, match="inner_lr"):
        maml_trpo.main(replace(TINY, out_dir=str(tmp_path), inner_lr=0.5))


def test_eval_entry_point_writes_table_and_plot(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    metrics = maml_trpo_eval.main(maml_trpo_eval.EvalArgs(run_dir=str(run_dir), out_dir=str(tmp_path), tasks=2,
                                                          steps=2))
    assert set(metrics) >= {"return_0", "return_1", "return_2", "return_2_ci95", "iteration"}
    assert all(math.isfinite(v) for v in metrics.values())
    lines = (tmp_path / "eval.csv").read_text().splitlines()
    assert lines[0] == "steps,return_mean,return_ci95" and len(lines) == 4
    assert (tmp_path / "eval.md").read_text().count("\n") == 5
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"


def test_compile_flag_runs_compiled_or_falls_back(tmp_path):
    """--compile compiles the vmapped adaptation, or falls back to eager with a RuntimeWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = maml_trpo.main(replace(TINY, out_dir=str(tmp_path), iterations=3, compile=True))
    assert all(math.isfinite(v) for k, v in metrics.items() if k != "compile_seconds"), metrics
    fallbacks = [w for w in caught if "compile_meta_step" in str(w.message)]
    assert math.isfinite(metrics["compile_seconds"]) != bool(fallbacks), (metrics, fallbacks)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="inner_steps"):
        maml_trpo.main(replace(TINY, out_dir=str(tmp_path), inner_steps=0))
    with pytest.raises(ValueError, match="eval_tasks"):
        maml_trpo.main(replace(TINY, out_dir=str(tmp_path), eval_tasks=1))


@pytest.mark.parametrize("module", ["recipes.maml_trpo", "recipes.maml_trpo_eval"])
def test_cli_help(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--out-dir" in result.stdout or "--run-dir" in result.stdout


@pytest.mark.slow
def test_learns_on_navigation(tmp_path):
    """After a short meta-training, one inner step clearly improves the return on held-out tasks."""
    args = maml_trpo.Args(out_dir=str(tmp_path), iterations=20, meta_batch=10, episodes=10, hidden=(32, 32),
                          eval_tasks=20, eval_steps=1, progress=False, tensorboard=False)
    metrics = maml_trpo.main(args)
    gain = metrics["eval_return_1"] - metrics["eval_return_0"]
    assert gain > 2 * (metrics["eval_return_0_ci95"] + metrics["eval_return_1_ci95"]) / 2, metrics
    assert metrics["return_post_last10"] > metrics["return_pre_last10"], metrics
