import math

import pytest

from metaops.experiment import RunLogger, save_json


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
