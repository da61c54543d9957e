"""MAML-TRPO run control: --env takes exactly the names registered in metaops.envs; Ctrl-C checkpoints."""

from __future__ import annotations

import signal
import threading
from dataclasses import replace

import pytest
import tyro

from metaops import envs
from metaops.experiment import RunInterrupted, RunLogger, load_checkpoint
from recipes import maml_trpo

TINY = maml_trpo.Args(iterations=3, meta_batch=2, episodes=2, horizon=8, hidden=(8,), eval_tasks=0,
                      progress=False, tensorboard=False, checkpoint_every=100)


def test_env_choices_are_the_registered_names():
    assert maml_trpo.ENVS == envs.env_names()
    for name in envs.env_names():
        assert tyro.cli(maml_trpo.Args, args=["--env", name]).env == name
    assert maml_trpo.Args().env in envs.env_names()


@pytest.mark.parametrize("name", ["navigation", "halfcheetah-vel", "metaops/Navigation2D-v0", "navigation2d"])
def test_unknown_env_is_a_clear_error_listing_the_names(tmp_path, name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(maml_trpo.Args, args=["--env", name])
    assert exit_info.value.code == 2
    with pytest.raises(ValueError, match=f"unknown env '{name}'; the registered environments are Navigation2D, "):
        maml_trpo.main(replace(TINY, out_dir=str(tmp_path), env=name))
    assert not (tmp_path / "config.json").exists()


def test_ctrl_c_checkpoints_and_the_run_resumes_from_there(tmp_path, monkeypatch, capsys):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    advance = RunLogger.advance

    def pressing_ctrl_c(self, n=1, **postfix):  # Ctrl-C during the first iteration
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pytest.fail("Ctrl-C raised KeyboardInterrupt in the middle of an iteration instead of being deferred")
        advance(self, n, **postfix)

    with monkeypatch.context() as patch:
        patch.setattr(RunLogger, "advance", pressing_ctrl_c)
        with pytest.raises(RunInterrupted) as stopped:
            maml_trpo.main(replace(TINY, out_dir=str(tmp_path)))
    assert stopped.value.code == 130 and load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 1
    assert "interrupted: checkpoint at iteration 1" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    maml_trpo.main(replace(TINY, out_dir=str(tmp_path)))
    assert f"resumed from {tmp_path / 'checkpoint.pt'} at iteration 1" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 3
