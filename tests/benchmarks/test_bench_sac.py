"""`benchmarks/bench_sac.py train --checkpoint`: a stopped and resumed run equals a run never stopped.

Both implementations run HalfCheetah-v5 with 200-step episodes for 400 steps, once straight
through and once stopped after 200 steps (the first run's process ends there) and resumed
from its checkpoint. The evaluation returns, the training-episode returns and the whole saved
state (parameters, optimizer moments, replay buffer, generators, environment) must be equal.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

from metaops.experiment import load_checkpoint

pytest.importorskip("stable_baselines3")

ROOT = Path(__file__).resolve().parents[2]


def _bench_sac():
    spec = importlib.util.spec_from_file_location("bench_sac", ROOT / "benchmarks" / "bench_sac.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_sac"] = module
    spec.loader.exec_module(module)
    return module


def _train(bench, monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_sac.py", "train", "--max-episode-steps", "200", "--eval-episodes", "1",
                                      "--checkpoint-every", "200", *args])
    bench.main()


def _assert_same(a, b, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("impl", ["metaops", "sb3"])
def test_resumed_run_equals_uninterrupted_run(impl, tmp_path, monkeypatch):
    bench = _bench_sac()
    common = ["--impl", impl, "--seed", "3", "--eval-at", "200"]
    _train(bench, monkeypatch, *common, "--steps", "400", "--out", str(tmp_path / "straight.jsonl"),
           "--checkpoint", str(tmp_path / "straight.pt"))
    _train(bench, monkeypatch, *common, "--steps", "200", "--out", str(tmp_path / "resumed.jsonl"),
           "--checkpoint", str(tmp_path / "resumed.pt"))
    assert load_checkpoint(tmp_path / "resumed.pt")["iteration"] == 200
    _train(bench, monkeypatch, *common, "--steps", "400", "--out", str(tmp_path / "resumed.jsonl"),
           "--checkpoint", str(tmp_path / "resumed.pt"))

    straight, resumed = ([json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
                         for name in ("straight", "resumed"))
    assert [r["steps"] for r in resumed] == [200, 400]  # the resumed run did not repeat its milestone
    for a, b in zip(straight, resumed, strict=True):
        assert a["eval_returns"] == b["eval_returns"]
        assert a["train_returns"] == b["train_returns"] and len(a["train_returns"]) == a["steps"] // 200
    a, b = load_checkpoint(tmp_path / "straight.pt"), load_checkpoint(tmp_path / "resumed.pt")
    assert a["iteration"] == b["iteration"] == 400
    _assert_same(a["state"], b["state"])
    stored = a["state"]["buffer"]["sizes"].item() if impl == "metaops" else len(a["state"]["buffer"]["rewards"])
    assert stored == 400  # the states compared hold the whole run


def test_resume_refuses_other_settings(tmp_path, monkeypatch):
    bench = _bench_sac()
    _train(bench, monkeypatch, "--impl", "metaops", "--seed", "0", "--steps", "200",
           "--checkpoint", str(tmp_path / "run.pt"))
    with pytest.raises(ValueError, match=r"seed: 0 \(checkpoint\) != 1 \(now\)"):
        _train(bench, monkeypatch, "--impl", "metaops", "--seed", "1", "--steps", "400",
               "--checkpoint", str(tmp_path / "run.pt"))
    with pytest.raises(SystemExit, match="multiple of the episode length"):
        _train(bench, monkeypatch, "--impl", "metaops", "--steps", "400", "--checkpoint-every", "300",
               "--checkpoint", str(tmp_path / "other.pt"))


def test_summary_reads_several_files_and_refuses_repeats(tmp_path, monkeypatch, capsys):
    bench = _bench_sac()
    evals = {"metaops": [1000.0, 3000.0, 5000.0], "sb3": [2500.0, 3500.0]}
    for i, (impl, values) in enumerate(evals.items()):
        lines = [json.dumps({"impl": impl, "seed": seed, "steps": 100, "threads": 1, "train_s": 1.0, "eval_mean": v,
                             "eval_returns": [v], "train_returns": [v]}) for seed, v in enumerate(values)]
        (tmp_path / f"{i}.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(sys, "argv", ["bench_sac.py", "summary", str(tmp_path / "0.jsonl"), str(tmp_path / "1.jsonl")])
    bench.main()
    out = capsys.readouterr().out
    # difference of means 3000 - 3000 = 0; Welch standard error sqrt(4e6 / 3 + 5e5 / 2)
    se = (statistics.variance(evals["metaops"]) / 3 + statistics.variance(evals["sb3"]) / 2) ** 0.5
    assert f"| 100 | +0 | {se:.0f} | 3 + 2 |" in out
    assert "| metaops | 100 | 3 | 3000 |" in out
    monkeypatch.setattr(sys, "argv", ["bench_sac.py", "summary", str(tmp_path / "0.jsonl"), str(tmp_path / "0.jsonl")])
    with pytest.raises(SystemExit, match="more than once"):
        bench.main()
