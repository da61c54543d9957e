"""Tests every sinusoid recipe shares: artifacts, exact resumption, the CLI."""

import importlib
import json
import math
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import tyro

from metaops.experiment import load_checkpoint

RECIPES = ["maml_sine", "metasgd_sine", "reptile_sine", "imaml_sine"]
ROOT = Path(__file__).resolve().parents[2]


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


def _loss_column(name):
    return "train/query_loss" if name == "reptile_sine" else "train/meta_loss"


@pytest.mark.parametrize("name", RECIPES)
def test_run_shorter_than_log_every_finishes_with_final_metrics_and_plot(tmp_path, name):
    module, args = tiny(name, tmp_path, iterations=3, log_every=10, eval_every=10, tensorboard=False)
    metrics = module.main(args)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    final = metrics["final_query_loss" if name == "reptile_sine" else "final_meta_loss"]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("3,")  # the final, partial window is logged at its iteration
    assert float(rows[1].split(",")[rows[0].split(",").index(_loss_column(name))]) == final
    assert (tmp_path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def _scalars(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _press_ctrl_c():
    """Sends SIGINT to this process; fails the test (instead of ending the session) if it is not deferred."""
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C raised KeyboardInterrupt in the middle of an iteration instead of being deferred")


def _ctrl_c_at(monkeypatch, iteration):
    """Presses Ctrl-C (a real SIGINT) during the given iteration's progress-bar update."""
    from metaops.experiment import RunLogger

    advance, calls = RunLogger.advance, []

    def pressing_ctrl_c(self, n=1, **postfix):
        calls.append(n)
        if len(calls) == iteration:
            _press_ctrl_c()
        advance(self, n, **postfix)

    monkeypatch.setattr(RunLogger, "advance", pressing_ctrl_c)


@pytest.mark.parametrize("name", RECIPES)
def test_interrupted_and_resumed_run_writes_the_logs_of_an_uninterrupted_one(tmp_path, name, monkeypatch, capsys):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    from metaops.experiment import RunInterrupted

    kw = dict(meta_batch=3, log_every=2, eval_every=2, checkpoint_every=100, tensorboard=True)
    module, straight = tiny(name, tmp_path / "straight", iterations=5, **kw)
    module.main(straight)  # rows at 2, 4 and the final partial window, 5
    split = replace(straight, out_dir=str(tmp_path / "split"))
    with monkeypatch.context() as patch:
        _ctrl_c_at(patch, 2)
        with pytest.raises(RunInterrupted) as stopped:
            module.main(split)
    assert stopped.value.code == 130 and load_checkpoint(tmp_path / "split" / "checkpoint.pt")["iteration"] == 2
    assert "interrupted: checkpoint at iteration 2" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    module.main(replace(split, iterations=3))  # resumes at 2 (the last logged step), logs a partial row at 3
    assert f"resumed from {tmp_path / 'split' / 'checkpoint.pt'} at iteration 2" in capsys.readouterr().out
    module.main(split)  # resumes at 3: the partial row is replaced by the full window's
    (a, metrics_a, csv_a), (b, metrics_b, csv_b) = _final_state(tmp_path / "straight"), _final_state(tmp_path / "split")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert metrics_a == metrics_b
    assert csv_a == csv_b and [line.split(",")[0] for line in csv_a.splitlines()[1:]] == ["2", "4", "5"]
    scalars = _scalars(tmp_path / "straight")
    assert [step for step, _ in scalars[_loss_column(name)]] == [2, 4, 5]
    assert _scalars(tmp_path / "split") == scalars


def test_ctrl_c_on_the_command_line_checkpoints_and_exits_without_a_traceback(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "recipes.maml_sine", "--iterations", "100000", "--meta-batch", "2",
               "--log-every", "1", "--eval-every", "1000", "--eval-tasks", "4", "--out-dir", str(out),
               "--no-progress", "--no-tensorboard"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.csv").is_file() and len((out / "metrics.csv").read_text().splitlines()) > 2):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    iteration = load_checkpoint(out / "checkpoint.pt")["iteration"]
    assert process.returncode == 130, stderr
    assert f"interrupted: checkpoint at iteration {iteration}" in stdout
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len(lines) == iteration + 1 and lines[-1].startswith(f"{iteration},")  # the log matches the checkpoint
