"""Partial adaptation (private): which parameters ``adapt(..., only=...)`` adapts, by name pattern."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from metaops.typing import LossFn, Params


def split_by_pattern(params: Params, only: str | Sequence[str] | None) -> tuple[Params, Params]:
    """``(adapted, frozen)``: the parameters whose names match a glob pattern of ``only``, and the rest.

    ``only=None`` adapts everything. Every pattern must match at least one name.
    """
    if only is None:
        return params, {}
    patterns = [only] if isinstance(only, str) else only
    if not isinstance(patterns, (list, tuple)) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            "adapt: only= takes a glob pattern over parameter names or a non-empty list of them, "
            f'e.g. only="head.*" or only=["head.*", "body.2.*"], got {only!r}'
        )
    names = list(params)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(
            f"adapt: only= pattern(s) {unmatched} match no parameter; the parameters are {names} "
            "(patterns are fnmatch globs matched against the whole name, case-sensitive: "
            '"head.*" matches "head.weight" and "head.0.bias")'
        )
    adapted = {n: v for n, v in params.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    return adapted, {n: v for n, v in params.items() if n not in adapted}


def merge(adapted: Params, frozen: Params, names: Sequence[str]) -> Params:
    """The adapted and frozen parameters as one dict, in the order of ``names``."""
    return {n: adapted[n] if n in adapted else frozen[n] for n in names}


def with_frozen(loss_fn: LossFn, frozen: Params, names: Sequence[str]) -> LossFn:
    """``loss_fn`` as a function of the adapted parameters only, the frozen ones held fixed."""
    if not frozen:
        return loss_fn
    return lambda params, batch: loss_fn(merge(params, frozen, names), batch)
