"""Tests every sinusoid recipe shares: artifacts, exact resumption, the CLI."""

import importlib
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import tyro

from metaops.experiment import load_checkpoint

RECIPES = ["maml_sine", "metasgd_sine", "reptile_sine", "imaml_sine"]


def recipe(name):
    return importlib.import_module(f"recipes.{name}")


def tiny(name, out, **kw):
    module = recipe(name)
    base = module.Args(iterations=2, meta_batch=2, eval_tasks=4, val_tasks=2, eval_query_shots=10, log_every=1,
                       eval_every=1, checkpoint_every=1, out_dir=str(out), progress=False)
    if name == "imaml_sine":
        base = replace(base, inner_steps=3)
    return module, replace(base, **kw)


@pytest.mark.parametrize("name", RECIPES)
def test_smoke_writes_every_artifact(tmp_path, name):
    module, args = tiny(name, tmp_path)
    metrics = module.main(args)
    assert {"mse_pre", "mse_pre_ci95", *[f"mse_{k}" for k in args.eval_steps]} <= set(metrics)
    if name == "imaml_sine":
        assert {"mse_proximal", "mse_proximal_ci95"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    for file in ("config.json", "metrics.csv", "metrics.json", "checkpoint.pt", "learning_curve.png", "fits.png"):
        assert (tmp_path / file).stat().st_size > 0, file
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["recipe"] == name and ckpt["iteration"] == 2
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3  # header + 2 iterations


def _final_state(out: Path):
    ckpt = load_checkpoint(out / "checkpoint.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("train_seconds")
    return ckpt, metrics, (out / "metrics.csv").read_text()


@pytest.mark.parametrize("name", RECIPES)
def test_resume_is_exact(tmp_path, name):
    # windows of 2 iterations, so the checkpoint after 3 falls mid-window; validation every 2
    kw = dict(meta_batch=3, log_every=2, eval_every=2, checkpoint_every=100, tensorboard=False)
    module, straight = tiny(name, tmp_path / "straight", iterations=6, **kw)
    module.main(straight)
    module.main(replace(straight, out_dir=str(tmp_path / "split"), iterations=3))
    module.main(replace(straight, out_dir=str(tmp_path / "split")))  # resumes from iteration 3
    (a, metrics_a, csv_a), (b, metrics_b, csv_b) = _final_state(tmp_path / "straight"), _final_state(tmp_path / "split")
    assert a["iteration"] == b["iteration"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["generator"], b["generator"])
    assert metrics_a == metrics_b
    assert csv_a == csv_b and len(csv_a.splitlines()) == 4  # header + steps 2, 4, 6: no duplicate rows


def test_resume_refuses_another_recipes_checkpoint(tmp_path):
    module, args = tiny("maml_sine", tmp_path, tensorboard=False)
    module.main(args)
    other, other_args = tiny("reptile_sine", tmp_path, tensorboard=False)
    with pytest.raises(ValueError, match="written by recipe 'maml_sine', not reptile_sine"):
        other.main(other_args)


@pytest.mark.parametrize("name", RECIPES)
def test_cli_help_in_process(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(recipe(name).Args, args=["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--iterations" in text and "--compile" in text and "--resume" in text


def test_divergence_is_a_clear_error(tmp_path):
    import metaops as mo

    module, args = tiny("reptile_sine", tmp_path, inner_lr=1e6, tensorboard=False)
    with pytest.raises(mo.inner.NonFiniteError, match="query-loss is (nan|inf) at meta-iteration 1"):
        module.main(args)
