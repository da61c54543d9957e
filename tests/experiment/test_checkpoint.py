import os

import pytest
import torch

from metaops.experiment import CheckpointError, load_checkpoint, load_run_checkpoint, save_checkpoint
from metaops.experiment._checkpoint import CHECKPOINT_VERSION


def _state():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(3, 2)).sum().backward()
    opt.step()
    g = torch.Generator().manual_seed(7)
    torch.rand(3, generator=g)
    return {"model": model.state_dict(), "opt": opt.state_dict(), "generator": g.get_state(),
            "iteration": 12, "window": [0.5, 0.25], "config": {"lr": 0.1, "name": "x", "flag": True}}


def test_round_trip_restores_everything(tmp_path):
    state = _state()
    save_checkpoint(tmp_path / "sub" / "ckpt.pt", state)
    loaded = load_checkpoint(tmp_path / "sub" / "ckpt.pt")
    assert loaded["iteration"] == 12 and loaded["window"] == [0.5, 0.25] and loaded["config"] == state["config"]
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    g = torch.Generator()
    g.set_state(loaded["generator"])
    ref = torch.Generator()
    ref.set_state(state["generator"])
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=ref))
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    opt.load_state_dict(loaded["opt"])
    assert opt.state_dict()["state"][0]["step"] == state["opt"]["state"][0]["step"]
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["ckpt.pt"]  # no temp files left


def test_truncated_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_garbage_file_raises_checkpoint_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError, match=r"ckpt\.pt.*corrupt or truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (b"", "empty")])
def test_missing_or_empty_file(tmp_path, content, message):
    path = tmp_path / "ckpt.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_version_mismatch_and_foreign_files(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"format": "metaops-checkpoint", "version": CHECKPOINT_VERSION + 1, "state": {}}, path)
    with pytest.raises(CheckpointError, match=f"version {CHECKPOINT_VERSION + 1}"):
        load_checkpoint(path)
    torch.save({"model": torch.ones(1)}, path)  # a plain torch file, not ours
    with pytest.raises(CheckpointError, match="not a metaops checkpoint"):
        load_checkpoint(path)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"iteration": 1})
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled; the exact type is torch's
        save_checkpoint(path, {"iteration": 2, "bad": lambda: None})
    assert load_checkpoint(path) == {"iteration": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_state_must_be_a_dict(tmp_path):
    with pytest.raises(TypeError, match="must be a dict"):
        save_checkpoint(tmp_path / "c.pt", [1, 2])


def test_checkpoint_gets_ordinary_file_permissions(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"iteration": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_message_is_short_and_does_not_suggest_weights_only_false(tmp_path, damage):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _state())
    path.write_bytes(path.read_bytes()[:200] if damage == "truncate" else os.urandom(300))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "corrupt or truncated" in message
    assert "weights_only" not in message and "\n" not in message
    # not chained, so the traceback does not print torch's advice either
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_resuming_from_a_corrupt_file_suggests_no_resume(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(os.urandom(300))
    with pytest.raises(CheckpointError) as error:
        load_run_checkpoint(path, recipe="demo", config={}, iterations=10)
    message = str(error.value)
    assert str(path) in message and "--no-resume" in message and "delete" in message
    assert "weights_only" not in message and error.value.__suppress_context__


def test_a_checkpoint_older_than_a_field_resumes_with_the_value_its_run_used(tmp_path):
    """added={field: old value}: a checkpoint without the field compares as if it had the old value."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"recipe": "demo", "config": {"lr": 0.1}, "iteration": 3})
    old_behaviour, new_default = {"lr": 0.1, "guard": None}, {"lr": 0.1, "guard": 1.0}
    assert load_run_checkpoint(path, recipe="demo", config=old_behaviour, iterations=5,
                               added={"guard": None})["iteration"] == 3
    with pytest.raises(ValueError, match=r"guard: None \(checkpoint\) != 1.0 \(now\)"):
        load_run_checkpoint(path, recipe="demo", config=new_default, iterations=5, added={"guard": None})
    with pytest.raises(ValueError, match=r"guard: '<missing>' \(checkpoint\)"):  # without `added`: refused
        load_run_checkpoint(path, recipe="demo", config=old_behaviour, iterations=5)
    save_checkpoint(path, {"recipe": "demo", "config": {"lr": 0.1, "guard": 1.0}, "iteration": 3})
    assert load_run_checkpoint(path, recipe="demo", config=new_default, iterations=5,
                               added={"guard": None})["iteration"] == 3  # a stored value wins over `added`
