"""Validating run configurations and checking them against a checkpoint's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["check_positive", "check_same_config"]


def check_positive(config: Any, *names: str) -> None:
    """Raises a ``ValueError`` naming the first field of ``config`` that is not ``> 0``.

    Args:
        config: An object with the named attributes (e.g. a recipe's ``Args`` dataclass).
        *names: Attribute names that must be positive finite numbers.

    Raises:
        ValueError: ``"<name> must be > 0, got <value>"`` for the first offending field.

    Examples:
        >>> from types import SimpleNamespace
        >>> check_positive(SimpleNamespace(shots=5, lr=0.0), "shots", "lr")
        Traceback (most recent call last):
        ...
        ValueError: lr must be > 0, got 0.0
    """
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"{name} must be > 0, got {value!r}")


def check_same_config(saved: Mapping[str, Any], current: Mapping[str, Any], *, ignore: Iterable[str] = ()) -> None:
    """Checks that a resumed run uses the configuration its checkpoint was written with.

    Args:
        saved: The configuration stored in the checkpoint.
        current: The configuration of the run that resumes.
        ignore: Fields allowed to differ (e.g. the iteration budget, output directory).

    Raises:
        ValueError: Naming every field whose value differs (or that only one side has).

    Examples:
        >>> check_same_config({"lr": 0.1, "iterations": 10}, {"lr": 0.1, "iterations": 20},
        ...                   ignore=["iterations"])
        >>> check_same_config({"lr": 0.1}, {"lr": 0.2})
        Traceback (most recent call last):
        ...
        ValueError: cannot resume: ... configuration: lr: 0.1 (checkpoint) != 0.2 (now)
    """
    skip = set(ignore)
    diffs = [
        f"{k}: {saved.get(k, '<missing>')!r} (checkpoint) != {current.get(k, '<missing>')!r} (now)"
        for k in sorted(set(saved) | set(current))
        if k not in skip and saved.get(k, "<missing>") != current.get(k, "<missing>")
    ]
    if diffs:
        raise ValueError(
            "cannot resume: the checkpoint was written with a different configuration: " + "; ".join(diffs)
        )
