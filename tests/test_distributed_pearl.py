"""recipes/pearl under torchrun: 2 processes equal 1, and a checkpoint resumes with any number of processes.

The configuration splits everything unevenly over the 2 processes: 5 training tasks (the replay
buffers of tasks 0-1 on rank 0, of 2-4 on rank 1), 3 tasks per collection (rows 1 + 2), a
meta-batch of 3 (split by who holds each task's buffers: from 0 + 3 to 3 + 0) and 3 held-out tasks.
"""

import json

import pytest

from metaops.experiment import load_checkpoint
from tests._helpers import assert_trees_close
from tests.test_distributed import _assert_same_rl_run, _one_and_two, _reference_and_resumed

PEARL_TINY = dict(env="Navigation2D", train_tasks=5, horizon=6, hidden=16, encoder_hidden=16, layers=2, batch_size=8,
                  context_batch=8, meta_batch=3, grad_steps=3, initial_episodes=2, tasks_per_iteration=3,
                  prior_episodes=1, posterior_episodes=1, tune_alpha=True, eval_tasks=3, checkpoint_every=2,
                  physics_threads=1, progress=False, tensorboard=False)
STATES = ("encoder", "policy", "critic", "target", "log_alpha")
RTOL, ATOL = 1e-4, 1e-5  # float rounding: sums grouped by process, policies batched over other rows


def _assert_same_pearl_run(one, two):
    """Same files, networks, temperature, Adam state, logged values, every buffer and the evaluation."""
    _assert_same_rl_run(one, two, states=STATES, rtol=RTOL, atol=ATOL)
    a, b = load_checkpoint(one / "checkpoint.pt"), load_checkpoint(two / "checkpoint.pt")
    assert a["grad_steps"] == b["grad_steps"]
    assert_trees_close(a["optimizer"]["state"], b["optimizer"]["state"], rtol=RTOL, atol=ATOL)
    assert len(a["sac_buffers"]) == len(b["sac_buffers"]) == PEARL_TINY["train_tasks"]  # every task's, gathered
    assert_trees_close(a["sac_buffers"] + a["enc_buffers"], b["sac_buffers"] + b["enc_buffers"], rtol=RTOL,
                       atol=ATOL)  # storage, position, size and the buffers' own generators
    metrics_a, metrics_b = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    for key, value in metrics_a.items():
        if key.startswith("eval_"):  # the held-out evaluation, split 1 + 2 over the processes
            assert metrics_b[key] == pytest.approx(value, rel=RTOL, abs=ATOL), key


def test_pearl_under_torchrun_equals_one_process(tmp_path):
    """Collection, buffers, gradient steps and evaluation split by task; gradients averaged per step."""
    _assert_same_pearl_run(*_one_and_two("pearl", tmp_path, 3, PEARL_TINY))


def test_pearl_resumes_with_another_number_of_processes(tmp_path):
    from recipes import pearl

    reference, resumed = _reference_and_resumed("pearl", tmp_path, 3, PEARL_TINY, switch_at=2)
    _assert_same_pearl_run(reference, resumed)
    # and back: the 2 processes' checkpoint (the buffers gathered from both) resumed by 1 process
    pearl.main(pearl.Args(out_dir=str(resumed), iterations=4, **PEARL_TINY))
    pearl.main(pearl.Args(out_dir=str(reference), iterations=4, **PEARL_TINY))
    _assert_same_pearl_run(reference, resumed)
