import os

import pytest
import torch

from metaops.experiment import CheckpointError, load_checkpoint, save_checkpoint
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
