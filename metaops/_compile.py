"""Compiling whole meta-steps with ``torch.compile``, with a safe eager fallback."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from metaops.tree import tree_flatten

__all__ = ["compile_meta_step", "CompiledMetaStep"]

# Reasons, noted during the first (eager) call of a CompiledMetaStep, why the step must stay
# eager: e.g. a checkpointed/implicit inner loop (a torch.autograd.Function that dynamo cannot
# trace under torch.func transforms) or batch norm that made strategy="auto" fall back to the
# per-task loop. ``None`` outside such a call, so noting costs one lookup.
_EAGER_ONLY: ContextVar[list[str] | None] = ContextVar("metaops_eager_only", default=None)


def note_eager_only(reason: str) -> None:
    """Records why the current computation cannot be compiled (private; no-op by default)."""
    reasons = _EAGER_ONLY.get()
    if reasons is not None and reason not in reasons:
        reasons.append(reason)


@contextmanager
def _recording() -> Iterator[list[str]]:
    reasons: list[str] = []
    token = _EAGER_ONLY.set(reasons)
    try:
        yield reasons
    finally:
        _EAGER_ONLY.reset(token)


# Reordered float32 sums differ by more than one would guess: on an Omniglot-shaped conv net
# (W2) compiled and eager per-task meta-gradients differ by up to 5e-3 of a leaf's largest
# entry (bias gradients, sums with cancellation), and a conv bias followed by batch norm has a
# gradient that is zero up to rounding (1e-7 in float32, all noise). The check is for gross
# errors (a dropped backward, a wrong kernel), so it leaves a margin above both.
_VERIFY_RTOL = {torch.float64: 1e-6, torch.float32: 2e-2}
_VERIFY_RTOL_LOW_PRECISION = 1e-1
_VERIFY_FLOOR = 1e-3  # of the largest magnitude in the whole output


def _mismatch(compiled: Any, eager: Any) -> str | None:
    """Why two outputs of a meta-step differ beyond float reordering, or ``None`` if they agree.

    A floating leaf must agree to ``rtol`` (1e-6 in float64, 2e-2 in float32, 1e-1 below)
    times the larger of its own largest finite magnitude and 1e-3 of the largest in the whole
    output; NaN matches NaN and equal infinities match. Everything else must be equal.
    """
    got, got_spec = tree_flatten(compiled)
    want, want_spec = tree_flatten(eager)
    if got_spec != want_spec:
        return f"the outputs have different structures ({got_spec} vs {want_spec})"

    def finite_max(x: Tensor) -> float:
        finite = x[torch.isfinite(x)]
        return finite.abs().max().item() if finite.numel() else 0.0

    floating = [b.detach() for b in want if isinstance(b, Tensor) and b.is_floating_point()]
    overall = max((finite_max(b) for b in floating), default=0.0)
    for i, (a, b) in enumerate(zip(got, want)):
        if not isinstance(b, Tensor):
            if a != b:
                return f"output leaf {i} is {a!r} compiled but {b!r} eager"
            continue
        if not isinstance(a, Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return f"output leaf {i} differs in type, shape or dtype"
        if not b.is_floating_point():
            if not torch.equal(a, b):
                return f"output leaf {i} ({b.dtype}) differs"
            continue
        a, b = a.detach(), b.detach()
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        diff = torch.where(same, torch.zeros_like(a), (a - b).abs())
        if bool(torch.isnan(diff).any()):
            return f"output leaf {i} is NaN in one run only"
        scale = max(finite_max(b), _VERIFY_FLOOR * overall)
        rtol = _VERIFY_RTOL.get(b.dtype, _VERIFY_RTOL_LOW_PRECISION)
        worst = diff.max().item() if diff.numel() else 0.0
        if worst > rtol * scale + torch.finfo(b.dtype).tiny:
            return f"output leaf {i} differs by {worst:.3g} (largest eager magnitude {finite_max(b):.3g})"
    return None


def _first_line(error: BaseException) -> str:
    def line(e: BaseException) -> str:
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"

    root = error
    while getattr(root, "inner_exception", None) is not None or root.__cause__ is not None:
        root = getattr(root, "inner_exception", None) or root.__cause__
    return line(error) if root is error else f"{type(error).__name__} <- {line(root)}"


class CompiledMetaStep:
    """A compiled meta-step that falls back to eager execution instead of crashing.

    Created by [metaops.compile_meta_step][]. Calls go through three phases:

    1. The first call runs ``fn`` eagerly, so that input validation and the checks that
       cannot run inside a compiled graph (non-finite losses, batch norm under ``vmap``) act
       with clear errors. It also finds steps that cannot be compiled: checkpointed and
       implicit inner loops (their ``torch.autograd.Function`` is not traceable by dynamo under
       ``torch.func`` transforms, torch 2.13), and batch norm that made ``strategy="auto"``
       fall back to the per-task loop. Those stay eager, with a ``RuntimeWarning``.
    2. The second call compiles (timed in ``compile_seconds``) and runs the compiled graph;
       ``DeprecationWarning``s raised inside torch while compiling are silenced, so that
       running under ``-W error`` does not fail the compilation. With ``verify=True`` (the
       default) the same call also runs eagerly, from the same random-number state, and the
       two results must agree to float tolerance (1e-6 in float64, 2e-2 in float32, where
       reordered sums with cancellation differ by up to 5e-3 on a conv net; relative to each
       output's largest magnitude, or to 1e-3 of the largest in the whole output for outputs
       that are zero up to rounding); otherwise the step stays eager with a
       ``RuntimeWarning`` and the eager result is returned. This catches wrong compiled
       meta-gradients, e.g. from a user's own ``torch.autograd.Function`` under ``torch.func``
       transforms, whose backward torch.compile (2.13) silently drops.
    3. Later calls with the same shapes reuse the graph without recompiling.

    If compiling fails at any call (no C compiler, an unsupported construct, a failing
    backend) and the same call succeeds eagerly, a ``RuntimeWarning`` says why, ``compiled``
    becomes ``False`` and every later call runs eagerly: training never crashes half-way
    because of the compiler. Errors that the eager function raises too (bad shapes, say)
    propagate unchanged.

    ``fn`` must be pure (no in-place updates of its inputs, no optimizer steps): the
    verifying call runs it twice. Steps that draw random numbers differ between eager and
    inductor-compiled runs (inductor has its own generator); pass ``verify=False`` for them.

    Attributes:
        compiled: Whether calls (after the first) run the compiled function.
        compile_seconds: Wall time of the first compiled call, ``None`` before it.
        fallback_reason: Why compilation was abandoned, if it was.
        calls: Number of calls so far.

    Examples:
        >>> step = CompiledMetaStep(lambda x: x + 1, backend="eager")
        >>> step(torch.zeros(1)), step(torch.zeros(1)), step.compiled
        (tensor([1.]), tensor([1.]), True)
    """

    def __init__(self, fn: Callable[..., Any], *, verify: bool = True, **compile_kwargs: Any) -> None:
        self.fn = fn
        self.verify = verify
        self.compile_kwargs = compile_kwargs
        self.compiled = True
        self.calls = 0
        self.compile_seconds: float | None = None
        self.fallback_reason: str | None = None
        self._compiled_fn: Callable[..., Any] | None = None
        try:
            self._compiled_fn = torch.compile(fn, **compile_kwargs)
        except Exception as error:  # noqa: BLE001 - any failure to set up compile -> eager
            self._fall_back(_first_line(error))
        functools.update_wrapper(self, fn)

    def _fall_back(self, reason: str) -> None:
        self.compiled = False
        self.fallback_reason = reason
        warnings.warn(
            f"metaops.compile_meta_step: not compiling ({reason}); running eagerly instead "
            "(same results, only slower)",
            RuntimeWarning,
            stacklevel=3,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if not self.compiled:
            return self.fn(*args, **kwargs)
        if self.calls == 1:
            with _recording() as reasons:
                out = self.fn(*args, **kwargs)
            if reasons:
                self._fall_back("; ".join(reasons))
            return out
        start = time.perf_counter()
        compiling = self.compile_seconds is None
        verifying = compiling and self.verify
        try:
            if compiling:  # torch's own deprecation warnings must not fail it under `-W error`
                # when verifying, the random-number state is restored for the eager run below
                with warnings.catch_warnings(), _same_rng_afterwards(verifying):
                    warnings.simplefilter("ignore", DeprecationWarning)
                    out = self._compiled_fn(*args, **kwargs)
            else:
                out = self._compiled_fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - decide below whether the compiler is at fault
            # Run the same call eagerly: if it fails too, the error is the user's (raise it);
            # if it succeeds, the compiler failed and the step stays eager from now on.
            out = self.fn(*args, **kwargs)
            self._fall_back(_first_line(error))
            return out
        if compiling:
            self.compile_seconds = time.perf_counter() - start
            if verifying:
                eager = self.fn(*args, **kwargs)
                reason = _mismatch(out, eager)
                if reason is not None:
                    self._fall_back(
                        f"the compiled result differs from the eager one: {reason}. Likely causes: a "
                        "torch.autograd.Function under torch.func transforms (torch.compile drops its "
                        "backward) or random numbers in the step (then pass verify=False)"
                    )
                    return eager
        return out


def _same_rng_afterwards(enabled: bool) -> AbstractContextManager:
    """``torch.random.fork_rng`` over the CPU and every initialised CUDA device, if ``enabled``."""
    if not enabled:
        return nullcontext()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)


def compile_meta_step(
    fn: Callable[..., Any],
    *,
    fullgraph: bool = True,
    mode: str | None = None,
    dynamic: bool | None = False,
    backend: str | Callable[..., Any] = "inductor",
    verify: bool = True,
) -> CompiledMetaStep:
    r"""Compiles a whole meta-step (e.g. ``meta_value_and_grad`` of a vmapped inner loop).

    Because the core is pure ``torch.func`` code, ``grad`` of a ``vmap`` over tasks of an
    inner loop traces into one graph, which ``torch.compile`` fuses; on small models this
    removes most of the Python and dispatch overhead (sinusoid MAML: about 7x faster than
    eager ``vmap``). The first call runs eagerly (validation), the second compiles (seconds
    to a minute), later calls with the same shapes reuse the graph without recompiling.

    Compiles: second-order, first-order and Meta-SGD inner loops, with
    ``strategy="vmap"`` or ``"chunked"`` (``"auto"`` means ``"vmap"`` while compiling), and
    iMAML written with [metaops.inner.implicit_value_and_grad][]. Stays eager, with a
    ``RuntimeWarning`` on the first call: [metaops.inner.checkpointed][] and
    [metaops.inner.implicit][] inner loops (their ``torch.autograd.Function``'s backward
    would be dropped by torch.compile under ``torch.func`` transforms), and batch norm in a
    second-order loop under ``strategy="auto"``. Any compiler failure, or a compiled result
    that disagrees with the eager one (``verify``), also falls back to eager with a warning.
    A batched meta-gradient compiles through its own option,
    ``meta_value_and_grad(..., compile=True)`` (which also compiles conv nets one task at a
    time); use this function for any other function of a meta-step, e.g. an adaptation used
    for sampling or iMAML's [metaops.inner.implicit_value_and_grad][] mapped over tasks.

    On a busy CPU (more runnable threads than cores), OpenMP threads that spin at barriers
    can make each call 10-100x slower, eager or compiled; set ``OMP_WAIT_POLICY=PASSIVE`` or
    ``torch.set_num_threads(1)`` there.

    Args:
        fn: The function to compile, e.g. ``lambda meta, s, q: meta_value_and_grad(...)``.
        fullgraph: Require one graph without breaks (recommended for the functional core).
        mode: ``torch.compile`` mode, e.g. ``"reduce-overhead"`` for CUDA graphs on GPU.
        dynamic: Passed to ``torch.compile``; ``False`` keeps shape-specialised graphs.
        backend: ``torch.compile`` backend (``"aot_eager"`` traces without generating code,
            which is handy for debugging).
        verify: Run the compiling call eagerly too and fall back to eager (with a warning)
            if the results disagree; see [metaops.CompiledMetaStep][]. ``fn`` must be pure.

    Returns:
        A [metaops.CompiledMetaStep][], called like ``fn``.

    Examples:
        >>> step = compile_meta_step(lambda x: (x ** 2).sum(), backend="eager")
        >>> step(torch.ones(3)), step(torch.ones(3))
        (tensor(3.), tensor(3.))
    """
    return CompiledMetaStep(fn, verify=verify, fullgraph=fullgraph, mode=mode, dynamic=dynamic, backend=backend)
