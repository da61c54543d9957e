"""Compiling whole meta-steps with ``torch.compile``, with a safe eager fallback."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["compile_meta_step", "CompiledMetaStep"]


def _compile_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        import torch._dynamo.exc as dynamo_exc

        for name in ("BackendCompilerFailed", "Unsupported", "InternalTorchDynamoError",
                     "TorchRuntimeError", "UserError"):
            if hasattr(dynamo_exc, name):
                errors.append(getattr(dynamo_exc, name))
    except ImportError:  # pragma: no cover - torch without dynamo
        pass
    try:
        import torch._inductor.exc as inductor_exc

        for name in ("InductorError", "CppCompileError", "InvalidCxxCompiler"):
            if hasattr(inductor_exc, name):
                errors.append(getattr(inductor_exc, name))
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


class CompiledMetaStep:
    """A compiled meta-step that falls back to eager execution if compilation fails.

    Created by [metaops.compile_meta_step][]. The first call runs ``fn`` eagerly, so that
    input validation and the checks that cannot run inside a compiled graph (non-finite
    losses, batch norm under ``vmap``) act with clear errors; the second call compiles (timed
    in ``compile_seconds``) and later calls run the compiled function. If compilation is
    unavailable or fails, a ``RuntimeWarning`` says why, ``compiled`` becomes ``False`` and
    every call runs eagerly, so training never crashes half-way because of the compiler.

    Attributes:
        compiled: Whether calls run the compiled function.
        compile_seconds: Wall time of the first (compiling) call, ``None`` before it.
        fallback_reason: Why compilation was abandoned, if it was.

    Examples:
        >>> step = compile_meta_step(lambda x: x * 2)
        >>> step(torch.ones(2))            # first call: eager
        tensor([2., 2.])
        >>> step.calls, step.compile_seconds
        (1, None)
    """

    def __init__(self, fn: Callable[..., Any], **compile_kwargs: Any) -> None:
        self.fn = fn
        self.compile_kwargs = compile_kwargs
        self.compiled = True
        self.calls = 0
        self.compile_seconds: float | None = None
        self.fallback_reason: str | None = None
        try:
            self._compiled_fn = torch.compile(fn, **compile_kwargs)
        except Exception as error:  # noqa: BLE001 - any failure to set up compile -> eager
            self._fall_back(error)
        functools.update_wrapper(self, fn)

    def _fall_back(self, error: BaseException) -> None:
        self.compiled = False
        self.fallback_reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        warnings.warn(
            f"metaops.compile_meta_step: compilation failed ({self.fallback_reason}); "
            "running eagerly instead (results are the same, only slower)",
            RuntimeWarning,
            stacklevel=3,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if not self.compiled or self.calls == 1:
            return self.fn(*args, **kwargs)
        if self.compile_seconds is None:
            start = time.perf_counter()
            try:
                out = self._compiled_fn(*args, **kwargs)
            except _compile_errors() as error:
                self._fall_back(error)
                return self.fn(*args, **kwargs)
            self.compile_seconds = time.perf_counter() - start
            return out
        return self._compiled_fn(*args, **kwargs)


def compile_meta_step(
    fn: Callable[..., Any],
    *,
    fullgraph: bool = True,
    mode: str | None = None,
    dynamic: bool | None = False,
) -> CompiledMetaStep:
    r"""Compiles a whole meta-step (e.g. ``meta_value_and_grad`` of a vmapped inner loop).

    Because the core is pure ``torch.func`` code, ``grad`` of a ``vmap`` over tasks of an
    inner loop traces into one graph, which ``torch.compile`` fuses; on small models this
    removes most of the Python and dispatch overhead. The first call compiles (seconds to a
    minute); later calls with the same shapes reuse the graph without recompiling.

    Args:
        fn: The function to compile, e.g. ``lambda meta, s, q: meta_value_and_grad(...)``.
        fullgraph: Require one graph without breaks (recommended for the functional core).
        mode: ``torch.compile`` mode, e.g. ``"reduce-overhead"`` for CUDA graphs on GPU.
        dynamic: Passed to ``torch.compile``; ``False`` keeps shape-specialised graphs.

    Returns:
        A [metaops.CompiledMetaStep][], called like ``fn``.

    Examples:
        >>> step = compile_meta_step(lambda x: (x ** 2).sum())
        >>> callable(step)
        True
    """
    return CompiledMetaStep(fn, fullgraph=fullgraph, mode=mode, dynamic=dynamic)
