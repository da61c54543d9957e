import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from metaops.experiment import CheckpointError, load_checkpoint
from recipes.maml_sine import Args, main

ROOT = Path(__file__).resolve().parents[2]


def tiny(tmp_path, **kw) -> Args:
    base = Args(iterations=2, meta_batch=2, eval_tasks=4, val_tasks=2, eval_query_shots=10, log_every=1,
                eval_every=1, checkpoint_every=1, out_dir=str(tmp_path), progress=False)
    return replace(base, **kw)


@pytest.mark.parametrize("first_order", [False, True])
def test_smoke_writes_every_artifact(tmp_path, first_order):
    metrics = main(tiny(tmp_path, first_order=first_order))
    assert {"mse_pre", "mse_1", "mse_5", "mse_10", "mse_10_ci95"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    for name in ("config.json", "metrics.csv", "metrics.json", "checkpoint.pt", "learning_curve.png", "fits.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    assert json.loads((tmp_path / "config.json").read_text())["first_order"] is first_order
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2


def _final_state(out: Path):
    ckpt = load_checkpoint(out / "checkpoint.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("train_seconds")
    return ckpt, metrics, (out / "metrics.csv").read_text()


def test_resume_is_exact(tmp_path):
    # windows of 2 iterations, so the checkpoint after 3 falls mid-window; validation every 2
    kw = dict(meta_batch=3, log_every=2, eval_every=2, checkpoint_every=100)
    main(tiny(tmp_path / "straight", iterations=6, **kw))
    main(tiny(tmp_path / "split", iterations=3, **kw))
    main(tiny(tmp_path / "split", iterations=6, **kw))  # resumes from iteration 3
    (a, metrics_a, csv_a), (b, metrics_b, csv_b) = _final_state(tmp_path / "straight"), _final_state(tmp_path / "split")
    assert a["iteration"] == b["iteration"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["generator"], b["generator"])
    assert metrics_a == metrics_b
    assert csv_a == csv_b and len(csv_a.splitlines()) == 4  # header + steps 2, 4, 6: no duplicate rows


def test_resume_refuses_a_different_config(tmp_path):
    main(tiny(tmp_path))
    with pytest.raises(ValueError, match=r"inner_lr: 0.01 \(checkpoint\) != 0.02 \(now\)"):
        main(tiny(tmp_path, inner_lr=0.02))
    main(tiny(tmp_path, inner_lr=0.02, resume=False))  # starting afresh is allowed
    with pytest.raises(ValueError, match="beyond --iterations 1"):
        main(tiny(tmp_path, inner_lr=0.02, iterations=1))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    main(tiny(tmp_path))
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="checkpoint.pt.*corrupt or truncated"):
        main(tiny(tmp_path, iterations=4))


@pytest.mark.parametrize("field, value, message", [
    ("meta_batch", 0, "meta_batch must be > 0"),
    ("inner_lr", -0.1, "inner_lr must be > 0"),
    ("eval_tasks", 1, "eval_tasks must be >= 2"),
    ("eval_steps", (0, 5), "eval_steps"),
    ("eval_every", 3, "multiple of log_every"),
])
def test_bad_config_is_a_clear_error(tmp_path, field, value, message):
    args = tiny(tmp_path, log_every=2, eval_every=2)
    with pytest.raises(ValueError, match=message):
        main(replace(args, **{field: value}))
    assert not (tmp_path / "checkpoint.pt").exists()


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "recipes.maml_sine", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--first-order" in result.stdout and "tasks per meta-update" in result.stdout


@pytest.mark.slow
def test_maml_learns(tmp_path):
    metrics = main(Args(iterations=3000, out_dir=str(tmp_path), eval_tasks=200, progress=False))
    assert metrics["mse_10"] < 0.5 * metrics["mse_pre"]
    assert metrics["mse_1"] + metrics["mse_1_ci95"] < metrics["mse_pre"] - metrics["mse_pre_ci95"]
