"""Validating run configurations and checking them against a checkpoint's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["check_positive", "check_same_config"]


def check_positive(config: Any, *names: str, allow_none: bool = False) -> None:
    """Raises a ``ValueError`` naming the first field of ``config`` that is not ``> 0``.

    A field holding a tuple or list (a schedule, e.g. one step size per inner step) must hold
    one or more numbers, each ``> 0``.

    Args:
        config: An object with the named attributes (e.g. a recipe's ``Args`` dataclass).
        *names: Attribute names that must be positive finite numbers, or non-empty tuples or
            lists of them.
        allow_none: Accept ``None`` (an optional field left unset) for these names.

    Raises:
        ValueError: ``"<name> must be > 0, got <value>"`` for the first offending field
            (``"<name> must be one or more numbers > 0, ..."`` for a sequence).

    Examples:
        >>> from types import SimpleNamespace
        >>> check_positive(SimpleNamespace(shots=5, lr=0.0), "shots", "lr")
        Traceback (most recent call last):
        ...
        ValueError: lr must be > 0, got 0.0
        >>> check_positive(SimpleNamespace(eval_lr=(0.5, 0.25), episodes=None), "eval_lr", "episodes",
        ...                allow_none=True)
        >>> check_positive(SimpleNamespace(eval_lr=()), "eval_lr")
        Traceback (most recent call last):
        ...
        ValueError: eval_lr must be one or more numbers > 0, got ()
    """
    positive = lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < float("inf")
    for name in names:
        value = getattr(config, name)
        if value is None and allow_none:
            continue
        if isinstance(value, (tuple, list)):
            if not value or not all(positive(v) for v in value):
                raise ValueError(f"{name} must be one or more numbers > 0, got {value!r}")
        elif not positive(value):
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
