import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from metaops.experiment import CheckpointError
from recipes.maml_sine import Args, main

ROOT = Path(__file__).resolve().parents[2]


def tiny(tmp_path, **kw) -> Args:
    base = Args(iterations=2, meta_batch=2, eval_tasks=4, val_tasks=2, eval_query_shots=10, log_every=1,
                eval_every=1, checkpoint_every=1, out_dir=str(tmp_path), progress=False)
    return replace(base, **kw)


def test_first_order_smoke(tmp_path):
    metrics = main(tiny(tmp_path, first_order=True, tensorboard=False))
    assert all(math.isfinite(v) for v in metrics.values())
    assert json.loads((tmp_path / "config.json").read_text())["first_order"] is True


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
    with pytest.raises(CheckpointError, match="checkpoint.pt.*corrupt or truncated") as error:
        main(tiny(tmp_path, iterations=4))
    assert "--no-resume" in str(error.value) and "weights_only" not in str(error.value)
    main(tiny(tmp_path, iterations=4, resume=False))  # the suggested way out works


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
