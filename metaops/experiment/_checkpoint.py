"""Atomic checkpoints: write to a temporary file, fsync, then rename over the target."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from metaops.experiment._config import check_same_config

__all__ = ["CHECKPOINT_VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint", "load_run_checkpoint"]

CHECKPOINT_VERSION = 1  # bump when the file layout changes; load_checkpoint refuses other versions
_FORMAT = "metaops-checkpoint"


class CheckpointError(RuntimeError):
    """Raised when a checkpoint is missing, truncated, corrupt or of another format version.

    Examples:
        >>> issubclass(CheckpointError, RuntimeError)
        True
    """


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Saves ``state`` to ``path`` atomically: a crash leaves the old file or the new one.

    The state is written with ``torch.save`` to a temporary file in the same directory, which
    is flushed and ``fsync``-ed and then renamed over ``path`` with ``os.replace`` (atomic on
    POSIX and Windows). The directory is ``fsync``-ed too where the platform allows it, so the
    rename itself survives a power cut. The file records a format tag and
    ``CHECKPOINT_VERSION``, which [metaops.experiment.load_checkpoint][] checks.

    Args:
        path: Destination file; its parent directory is created if needed.
        state: A dict of tensors, numbers, strings and nested lists/tuples/dicts of those
            (e.g. ``model.state_dict()``, ``optimizer.state_dict()``,
            ``generator.get_state()``); it must load with ``torch.load(weights_only=True)``.

    Raises:
        TypeError: If ``state`` is not a dict.

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "ckpt.pt"
        >>> save_checkpoint(path, {"iteration": 3, "w": torch.ones(2)})
        >>> load_checkpoint(path)["iteration"]
        3
    """
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint: state must be a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": _FORMAT, "version": CHECKPOINT_VERSION, "state": state}, f)
            f.flush()
            os.fsync(f.fileno())
        default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _read_umask() -> int:
    umask = os.umask(0)  # the only portable way to read it; done once, at import
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def default_permissions(path: str | os.PathLike) -> None:
    """Gives a ``mkstemp`` file (mode 0600) the mode a plain ``open`` would (0666 minus umask)."""
    os.chmod(path, 0o666 & ~_UMASK)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a checkpoint written by [metaops.experiment.save_checkpoint][].

    Loading uses ``torch.load(weights_only=True)``, so a checkpoint cannot run code.

    Args:
        path: The checkpoint file.

    Returns:
        The ``state`` dict that was saved.

    Raises:
        CheckpointError: If the file is missing, empty, truncated or otherwise unreadable,
            is not a metaops checkpoint, or has a different format version; the message names
            the file and the problem.

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "ckpt.pt"
        >>> _ = path.write_bytes(b"not a checkpoint")
        >>> load_checkpoint(path)
        Traceback (most recent call last):
        ...
        metaops.experiment._checkpoint.CheckpointError: checkpoint ... is corrupt or truncated ...
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every read failure means the same to the caller
        # not chained (`from None`): torch's message advises weights_only=False, which would run the file's
        # code and cannot repair it; the original stays available as __context__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated ({size} bytes; {_load_failure(error)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT or "state" not in payload:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a metaops checkpoint")
    version = payload.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {version!r}, this metaops reads "
            f"version {CHECKPOINT_VERSION}; rerun without resuming, or use the metaops that wrote it"
        )
    return payload["state"]


def _load_failure(error: Exception) -> str:
    """The gist of a torch.load error, without its advice to retry with weights_only=False."""
    text = str(error)
    if "WeightsUnpickler error:" in text:  # the weights-only unpickler rejected the bytes
        text = "unpickling failed: " + text.split("WeightsUnpickler error:", 1)[1].strip()
    lines = [line for line in text.splitlines() if line.strip() and "weights_only" not in line]
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def load_run_checkpoint(
    path: str | os.PathLike,
    *,
    recipe: str,
    config: Mapping[str, Any],
    ignore: Iterable[str] = (),
    iterations: int,
    added: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Loads a recipe's checkpoint to resume it, refusing one that does not belong to this run.

    Checks, with errors that name the problem, that the checkpoint was written by ``recipe``,
    that its configuration equals ``config`` except for the ``ignore`` fields (see
    [metaops.experiment.check_same_config][]), and that it is not beyond ``iterations``.

    Args:
        path: The checkpoint file.
        recipe: The recipe's name, as stored under ``"recipe"``.
        config: The current configuration, compared with the stored ``"config"``.
        ignore: Fields a resumed run may change (run control such as ``iterations``).
        iterations: The run's total iterations; the stored ``"iteration"`` may not exceed it.
        added: Fields the recipe gained after some checkpoints were written, each with the
            value that such a checkpoint's run used (the behaviour before the field existed).
            A checkpoint without the field is compared as if it had that value, so an old run
            resumes exactly when the field is set to it, and is refused, naming the field,
            when it is not.

    Returns:
        The checkpoint's state dict.

    Raises:
        CheckpointError: If the file is missing or corrupt; the message suggests starting
            afresh with ``--no-resume`` or deleting the file.
        ValueError: If it belongs to another recipe, another configuration, or a longer run.

    Examples:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
        >>> save_checkpoint(path, {"recipe": "demo", "config": {"lr": 0.1}, "iteration": 3})
        >>> load_run_checkpoint(path, recipe="demo", config={"lr": 0.1}, iterations=10)["iteration"]
        3
        >>> load_run_checkpoint(path, recipe="other", config={"lr": 0.1}, iterations=10)
        Traceback (most recent call last):
        ...
        ValueError: ... was written by recipe 'demo', not other
        >>> # a field added to the recipe later: the old run had no clipping (clip=None)
        >>> load_run_checkpoint(path, recipe="demo", config={"lr": 0.1, "clip": None}, iterations=10,
        ...                     added={"clip": None})["iteration"]
        3
    """
    try:
        state = load_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(
            f"{error}; cannot resume from it: rerun with --no-resume to start afresh, or delete {str(path)!r}"
        ) from None
    if state.get("recipe") != recipe:
        raise ValueError(f"{path} was written by recipe {state.get('recipe')!r}, not {recipe}")
    saved = {**(added or {}), **state["config"]}  # a field the checkpoint lacks: the value its run used
    check_same_config(saved, config, ignore=ignore)
    if state["iteration"] > iterations:
        raise ValueError(f"{path} is at iteration {state['iteration']}, beyond --iterations {iterations}")
    return state
