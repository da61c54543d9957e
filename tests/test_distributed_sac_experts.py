"""recipes/sac_experts.py on 2 processes equals 1 process: per-task experts (uneven shares), the conditioned expert,
episodes that end early (tasks whose buffers fill unevenly), and resuming a 1-process checkpoint on 2 processes.

Each comparison covers the checkpoint (parameters, target critics, Adam, replay buffers, generators), the logged
values, metrics.json and the demonstrations.
"""

import json
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metaops import envs
from metaops.experiment import load_checkpoint
from tests._helpers import assert_trees_close
from tests.rl_recipes.test_sac_experts import _EndsEarly
from tests.test_distributed import WORLD, _assert_same_rl_run, _finish, _one_and_two, _reference_and_resumed

SAC_TINY = dict(env="Navigation2D", train_tasks=3, horizon=10, hidden=(8,), batch_size=6, learning_starts=5,
                demo_episodes=2, eval_episodes=2, checkpoint_every=2, progress=False, tensorboard=False)
"""3 tasks (shares of 1 and 2), four 10-step episodes, 8-unit networks: a few seconds of training."""
RTOL, ATOL = 1e-4, 1e-6


def _assert_same_experts(one: Path, two: Path) -> None:
    """Same files, logged rows, experts, targets, Adam states, replay buffers, generators, metrics, demonstrations."""
    _assert_same_rl_run(one, two, states=("params", "target"), rtol=RTOL, atol=ATOL)
    a, b = load_checkpoint(one / "checkpoint.pt"), load_checkpoint(two / "checkpoint.pt")
    assert a["batch_steps"] == b["batch_steps"] and a["gradient_steps"] == b["gradient_steps"]
    assert torch.equal(a["generator"], b["generator"])  # every random draw was the whole batch's
    assert torch.equal(a["initial_returns"], b["initial_returns"])
    for key in ("generator", "positions", "sizes"):
        assert torch.equal(a["buffer"][key], b["buffer"][key]), key
    assert torch.equal(a["buffer"]["storage"]["terminated"], b["buffer"]["storage"]["terminated"])
    assert_trees_close(a["buffer"]["storage"], b["buffer"]["storage"], rtol=RTOL, atol=ATOL)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert_trees_close(a["optimizer"]["state"], b["optimizer"]["state"], rtol=RTOL, atol=ATOL)
    metrics_a, metrics_b = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert metrics_a.keys() == metrics_b.keys()
    for key, value in metrics_a.items():
        if "seconds" not in key and not key.startswith("ms_"):
            assert metrics_b[key] == pytest.approx(value, rel=RTOL, abs=ATOL), key
    demos_a, demos_b = (envs.load_demonstrations(run / "demos") for run in (one, two))
    assert demos_a.tasks == demos_b.tasks and demos_a.expert == demos_b.expert
    for field in ("observations", "actions", "rewards", "mask"):
        torch.testing.assert_close(getattr(demos_b, field), getattr(demos_a, field), rtol=RTOL, atol=ATOL, msg=field)


@pytest.mark.parametrize("mode", ["per-task", "conditioned"])
def test_sac_experts_under_torchrun_equals_one_process(tmp_path, mode):
    """Per task: each process its experts, buffers and env copies. Conditioned: the gradients averaged per step."""
    _assert_same_experts(*_one_and_two("sac_experts", tmp_path, 4, dict(SAC_TINY, mode=mode)))


def test_sac_experts_resumes_a_one_process_checkpoint_on_two_processes(tmp_path):
    _assert_same_experts(*_reference_and_resumed("sac_experts", tmp_path, 4, SAC_TINY, switch_at=2))


# ---- episodes that end early: the tasks' buffers fill unevenly, on either side of the split ----------------

STOPS = [2, 4, 6]  # task k terminates at step STOPS[k]: rank 0 holds task 0, rank 1 tasks 1 and 2
MODES = ["per-task", "conditioned"]


def _ends_early_args(mode, out):
    from recipes import sac_experts

    return sac_experts.Args(out_dir=str(out), iterations=4, mode=mode, **SAC_TINY)


def _ends_early(real):
    """``make_batched`` whose environments end task k's episodes at step STOPS[k] (this process's tasks)."""
    return lambda *a, **kw: _EndsEarly(real(*a, **kw), STOPS[slice(*_rows_of(kw["num_tasks"]))])


def _rows_of(num_tasks):
    """The rows of the 3 tasks that an environment of ``num_tasks`` copies holds (the recipe's task_slice)."""
    from metaops.distributed import task_slice

    if not dist.is_initialized():
        return 0, num_tasks
    rows = task_slice(len(STOPS), dist.group.WORLD)
    assert rows.stop - rows.start == num_tasks
    return rows.start, rows.stop


def _ends_early_worker(rank, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=WORLD)
    results = {}
    try:
        envs.make_batched = _ends_early(envs.make_batched)  # this spawned process only
        from recipes import sac_experts

        for mode in MODES:
            results[mode] = sac_experts.main(_ends_early_args(mode, Path(out_dir) / mode))
    except Exception:  # noqa: BLE001 - reported by the test
        results["error"] = traceback.format_exc()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    _finish()


def test_episodes_that_end_early_on_two_processes_equal_one(tmp_path, monkeypatch):
    """Only the transitions of running episodes are stored, so task k holds 4 * STOPS[k]: uneven across processes."""
    from recipes import sac_experts

    monkeypatch.setattr(envs, "make_batched", _ends_early(envs.make_batched))
    want = {mode: sac_experts.main(_ends_early_args(mode, tmp_path / "one" / mode)) for mode in MODES}
    two = tmp_path / "two"
    two.mkdir()
    mp.spawn(_ends_early_worker, args=(str(two),), nprocs=WORLD, join=True)
    results = [torch.load(two / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, result in enumerate(results):
        assert "error" not in result, f"rank {r}:\n{result.get('error')}"
    for mode in MODES:
        assert load_checkpoint(two / mode / "checkpoint.pt")["buffer"]["sizes"].tolist() == [4 * s for s in STOPS]
        _assert_same_experts(tmp_path / "one" / mode, two / mode)
        for result in results:  # every process returns the run's metrics
            for key, value in want[mode].items():
                if "seconds" not in key and not key.startswith("ms_"):
                    assert result[mode][key] == pytest.approx(value, rel=RTOL, abs=ATOL), (mode, key)
