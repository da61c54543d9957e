import math
import signal
import threading

import pytest

from metaops.experiment import RunInterrupted, RunLogger, save_json


def _logger(path, **kw):
    kw.setdefault("tensorboard", False)
    return RunLogger(path, fields=["loss", "val"], total=10, progress=False, **kw)


def test_rows_and_history(tmp_path):
    with _logger(tmp_path) as logger:
        logger.log(1, {"loss": 2.0})
        logger.log(2, {"loss": 1.0, "val": 3.0})
        assert logger.rows == 2
        hist = logger.history()
    assert hist["step"] == [1.0, 2.0] and hist["loss"] == [2.0, 1.0]
    assert math.isnan(hist["val"][0]) and hist["val"][1] == 3.0
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "step,loss,val"


def test_resume_drops_rows_after_the_checkpoint_and_does_not_duplicate(tmp_path):
    with _logger(tmp_path) as logger:
        for step in range(1, 5):
            logger.log(step, {"loss": float(step)})
    # the checkpoint was taken after 2 rows; the crashed run had logged 2 more
    with _logger(tmp_path, initial=2, rows=2) as logger:
        logger.log(3, {"loss": 30.0})
        assert logger.rows == 3
    with _logger(tmp_path, initial=3, rows=3) as logger:
        assert logger.history()["step"] == [1.0, 2.0, 3.0]
        assert logger.history()["loss"] == [1.0, 2.0, 30.0]


def test_fresh_start_overwrites(tmp_path):
    with _logger(tmp_path) as logger:
        logger.log(1, {"loss": 1.0})
    with _logger(tmp_path) as logger:
        assert logger.history()["step"] == []


def test_resume_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        _logger(tmp_path, rows=1)
    with _logger(tmp_path) as logger:
        logger.log(1, {"loss": 1.0})
    with pytest.raises(ValueError, match="holds only 1"):
        _logger(tmp_path, rows=5)
    with pytest.raises(ValueError, match="has columns"):
        RunLogger(tmp_path, fields=["other"], total=1, rows=1, tensorboard=False, progress=False)
    with pytest.raises(ValueError, match="rows must be >= 0"):
        _logger(tmp_path, rows=-1)
    with pytest.raises(ValueError, match="duplicate or reserved"):
        RunLogger(tmp_path, fields=["step"], total=1, tensorboard=False, progress=False)


def test_unknown_metric_is_an_error(tmp_path):
    with _logger(tmp_path) as logger, pytest.raises(ValueError, match=r"\['typo'\] are not columns"):
        logger.log(1, {"typo": 1.0})


def test_tensorboard_events_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with _logger(tmp_path, tensorboard=True) as logger:
        logger.log(1, {"loss": 2.0})
        logger.log(2, {"loss": 1.0})
        logger.advance(2, loss=1.0)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 2.0), (2, 1.0)]


def test_save_json_is_valid_json(tmp_path):
    save_json(tmp_path / "a" / "m.json", {"b": 1.5, "a": [1, 2]})
    assert (tmp_path / "a" / "m.json").read_text().startswith('{\n  "a"')
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["m.json"]


def _scalars(out_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_after_resume_equals_an_uninterrupted_run(tmp_path):
    with _logger(tmp_path / "straight", tensorboard=True) as logger:
        for step in range(1, 5):
            logger.log(step, {"loss": float(step), "val": -float(step)})
    # crashed run: the checkpoint holds 2 rows (steps 1, 2), the run went on to log steps 3 and 4 ...
    with _logger(tmp_path / "split", tensorboard=True) as logger:
        for step in range(1, 5):
            logger.log(step, {"loss": float(step) if step <= 2 else 99.0, "val": -float(step)})
    # ... and the resumed run logs them again: step 2, the last checkpointed one, must survive
    with _logger(tmp_path / "split", tensorboard=True, initial=2, rows=2) as logger:
        for step in (3, 4):
            logger.log(step, {"loss": float(step), "val": -float(step)})
    straight = _scalars(tmp_path / "straight")
    assert straight["loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert _scalars(tmp_path / "split") == straight



def test_fresh_start_hides_earlier_tensorboard_events(tmp_path):
    with _logger(tmp_path, tensorboard=True) as logger:
        logger.log(1, {"loss": 1.0})
        logger.log(2, {"loss": 2.0})
    with _logger(tmp_path, tensorboard=True) as logger:  # rows=0: a new run in the same directory
        logger.log(1, {"loss": 10.0})
    assert _scalars(tmp_path)["loss"] == [(1, 10.0)]


def _requires_main_thread():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")


def test_deferred_ctrl_c_checkpoints_then_stops(tmp_path, capfd):
    _requires_main_thread()
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted) as stopped, _logger(tmp_path, defer_interrupt=True) as logger:
        logger.stop_if_interrupted(1)  # a checkpoint without Ctrl-C: nothing happens
        try:
            signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: the iteration finishes
        except KeyboardInterrupt:
            pytest.fail("the first Ctrl-C was not deferred")
        assert logger.interrupted
        assert signal.getsignal(signal.SIGINT) == before  # a second Ctrl-C would stop at once
        logger.log(2, {"loss": 1.0})
        logger.stop_if_interrupted(2)
        raise AssertionError("stop_if_interrupted returned after a Ctrl-C")
    assert isinstance(stopped.value, SystemExit) and stopped.value.code == 130 and stopped.value.iteration == 2
    captured = capfd.readouterr()
    assert "interrupted: checkpoint at iteration 2" in captured.out
    assert "stopping after this iteration" in captured.err
    assert signal.getsignal(signal.SIGINT) == before
    assert logger.history()["step"] == [2.0]


def test_sigterm_checkpoints_then_stops_like_ctrl_c(tmp_path, capfd):
    """torchrun (when interrupted) and SLURM send SIGTERM: the same checkpoint-then-stop, handlers restored."""
    _requires_main_thread()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RunInterrupted) as stopped, _logger(tmp_path, defer_interrupt=True) as logger:
        signal.raise_signal(signal.SIGTERM)  # deferred: the process is not terminated
        assert logger.interrupted
        assert {sig: signal.getsignal(sig) for sig in before} == before  # a second signal acts at once
        logger.log(3, {"loss": 1.0})
        logger.stop_if_interrupted(3)
        raise AssertionError("stop_if_interrupted returned after a SIGTERM")
    assert stopped.value.code == 130 and stopped.value.iteration == 3
    captured = capfd.readouterr()
    assert "SIGTERM: stopping after this iteration" in captured.err
    assert "interrupted: checkpoint at iteration 3" in captured.out
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_second_ctrl_c_stops_at_once_naming_the_last_checkpoint(tmp_path, capsys):
    _requires_main_thread()
    deferred = []
    with pytest.raises(RunInterrupted) as stopped, _logger(tmp_path, defer_interrupt=True, initial=0) as logger:
        logger.stop_if_interrupted(5)
        signal.raise_signal(signal.SIGINT)
        deferred.append(logger.interrupted)
        signal.raise_signal(signal.SIGINT)  # KeyboardInterrupt, mid-iteration
        raise AssertionError("the second Ctrl-C did not interrupt")
    assert deferred == [True]
    assert stopped.value.iteration == 5 and stopped.value.__cause__ is None and stopped.value.__suppress_context__
    assert "interrupted: checkpoint at iteration 5" in capsys.readouterr().out
    with pytest.raises(RunInterrupted, match="before the first checkpoint"), _logger(tmp_path, defer_interrupt=True):
        raise KeyboardInterrupt


def test_ctrl_c_is_not_deferred_by_default_nor_after_close(tmp_path):
    _requires_main_thread()
    with pytest.raises(KeyboardInterrupt), _logger(tmp_path):
        signal.raise_signal(signal.SIGINT)
    logger = _logger(tmp_path, defer_interrupt=True)
    logger.close()
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert not logger.interrupted


def test_ctrl_c_after_the_last_checkpoint_still_stops_the_run(tmp_path, capsys):
    _requires_main_thread()
    with pytest.raises(RunInterrupted, match="iteration 3"), _logger(tmp_path, defer_interrupt=True) as logger:
        logger.stop_if_interrupted(3)  # the loop's last checkpoint
        signal.raise_signal(signal.SIGINT)  # e.g. while logging a final row: the run must not go on evaluating
    assert "interrupted: checkpoint at iteration 3" in capsys.readouterr().out
