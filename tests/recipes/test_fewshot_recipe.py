"""recipes/fewshot.py: every algorithm on every dataset kind, artifacts, exact resumption, MAML learns."""

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from metaops.experiment import load_checkpoint
from recipes.fewshot import Args, main

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = ["maml", "fomaml", "reptile", "metasgd", "anil", "baseline"]


def tiny(out, cache, **kw):
    args = Args(dataset="glyphs", data_dir=str(cache), image_size=12, hidden=8, meta_batch=2, iterations=2,
                log_every=1, eval_every=1, checkpoint_every=1, eval_tasks=4, val_tasks=2, query_shots=2,
                finetune_steps=2, out_dir=str(out), progress=False, tensorboard=False)
    args = replace(args, **kw)
    if args.algorithm == "reptile":
        args = replace(args, inner_steps=2)
    return args


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_runs_and_writes_its_artifacts(tmp_path, algorithm):
    metrics = main(tiny(tmp_path / "run", tmp_path / "cache", algorithm=algorithm, eval_init=True))
    assert {"accuracy", "accuracy_ci95", "accuracy_init", "accuracy_gain", "train_seconds"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert 0.0 <= metrics["accuracy"] <= 1.0
    for file in ("config.json", "metrics.csv", "metrics.json", "checkpoint.pt", "learning_curve.png"):
        assert (tmp_path / "run" / file).stat().st_size > 0, file
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == pytest.approx(metrics)
    header, *rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert "val/accuracy" in header and len(rows) == 2


def test_folder_dataset_runs_on_an_omniglot_layout(tmp_path):
    g = torch.Generator().manual_seed(0)
    for alphabet in ("Latin", "Greek"):
        for character in range(3):
            for i in range(4):
                path = tmp_path / "data" / alphabet / f"character{character:02d}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = (torch.rand(10, 10, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(path)
    args = tiny(tmp_path / "run", None, dataset="folder", data_dir=str(tmp_path / "data"), image_size=8,
                ways=2, split=(2, 2, 2), algorithm="anil")
    metrics = main(args)
    assert math.isfinite(metrics["accuracy"])
    with pytest.raises(ValueError, match="--data-dir"):
        main(replace(args, data_dir=None))


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    whole = tiny(tmp_path / "whole", tmp_path / "cache", iterations=4, checkpoint_every=2)
    main(whole)
    part = replace(whole, out_dir=str(tmp_path / "part"), iterations=2)
    main(part)
    main(replace(part, iterations=4))
    a, b = load_checkpoint(tmp_path / "whole" / "checkpoint.pt"), load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert (tmp_path / "whole" / "metrics.csv").read_text() == (tmp_path / "part" / "metrics.csv").read_text()
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("whole", "part")]
    assert metrics[0]["accuracy"] == metrics[1]["accuracy"]


def test_bad_options_raise():
    with pytest.raises(ValueError, match="reptile needs --inner-steps >= 2"):
        main(Args(algorithm="reptile", inner_steps=1))
    with pytest.raises(ValueError, match="eval_every"):
        main(Args(eval_every=30, log_every=20))


def test_cli_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "recipes.fewshot", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "--algorithm" in out and "baseline" in out and "--data-dir" in out


@pytest.mark.slow
def test_maml_learns_digits_over_three_seeds(tmp_path):
    # 5-way 1-shot on the 5 test digits, paired against the untrained init on the same tasks.
    pytest.importorskip("sklearn")
    gains = []
    for seed in range(3):
        args = Args(dataset="digits", algorithm="maml", seed=seed, hidden=16, meta_batch=4, iterations=120,
                    log_every=40, eval_every=120, checkpoint_every=120, eval_tasks=100, eval_init=True,
                    out_dir=str(tmp_path / f"seed{seed}"), progress=False, tensorboard=False)
        metrics = main(args)
        gains.append((metrics["accuracy_gain"], metrics["accuracy_gain_ci95"], metrics["accuracy"]))
    for gain, half_width, accuracy in gains:
        assert gain - half_width > 0.05 and accuracy > 0.25, gains
