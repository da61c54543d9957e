"""Execution strategies over a batch of tasks: full vmap, chunked vmap or a per-task loop."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from metaops._batchnorm import BatchNormUnderVmapError, batch_norm_context
from metaops._compile import note_eager_only
from metaops.distributed._reduce import flat_all_reduce_sum
from metaops.distributed._setup import rank, world_size
from metaops.inner._adapt import NonFiniteError
from metaops.inner._validate import under_transform
from metaops.tree import (
    stop_gradient,
    tree_add,
    tree_flatten,
    tree_index,
    tree_leaves,
    tree_map,
    tree_stack,
    tree_unflatten,
)
from metaops.typing import PyTree

__all__ = ["map_tasks", "meta_value_and_grad", "Strategy"]

Strategy = Literal["auto", "vmap", "chunked", "loop"]
_STRATEGIES = ("auto", "vmap", "chunked", "loop")
_log = logging.getLogger("metaops")

# "auto" loops over tasks on CPU when one task's data has more elements than this: such tasks
# are compute-bound, and vmapping per-task weights turns a convolution into a grouped one
# (measured on 2 CPU cores: Omniglot-shaped conv4, ~23k elements/task, vmap 2x slower and 6x
# the memory of the loop; sinusoid MLP, 40 elements/task, vmap 5x faster).
_LOOP_ELEMENTS_PER_TASK = 16384
_BATCHNORM_FALLBACK = (
    "batch norm in a second-order inner loop made strategy='auto' use the exact per-task loop, "
    "which runs eagerly (a compiled vmap would give torch's wrong batch-norm gradient)"
)


def _check_strategy(strategy: str, chunk_size: int | None) -> None:
    if strategy not in _STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(_STRATEGIES)}")
    if strategy == "chunked":
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"strategy='chunked' needs chunk_size >= 1, got {chunk_size!r}")
    elif chunk_size is not None:
        raise ValueError(f"chunk_size is only used with strategy='chunked' (got {strategy!r})")


def _num_tasks(args: tuple, in_dims: tuple, *, allow_empty: bool = False) -> int:
    sizes = set()
    for i, (arg, dim) in enumerate(zip(args, in_dims)):
        if dim is None:
            continue
        for leaf in tree_leaves(arg):
            if not isinstance(leaf, Tensor) or leaf.dim() == 0:
                raise ValueError(f"task argument {i} has a leaf without a leading task dimension")
            sizes.add(leaf.shape[0])
    if not sizes:
        raise ValueError("no argument is batched over tasks (all in_dims are None)")
    if len(sizes) > 1:
        raise ValueError(f"task arguments disagree on the number of tasks: {sorted(sizes)}")
    n = sizes.pop()
    if n == 0 and not allow_empty:
        raise ValueError("the task batch is empty")
    return n


def _check_per_task_data(task_args: tuple) -> None:
    """Refuses a 1-D task leaf: each task would get one scalar, the mark of one task's data
    passed without its task dimension (``(K,)`` read as ``K`` one-point tasks)."""
    for i, arg in enumerate(task_args):
        for leaf in tree_leaves(arg):
            if isinstance(leaf, Tensor) and leaf.dim() == 1:
                raise ValueError(
                    f"task argument {i} has a leaf of shape {tuple(leaf.shape)}, which would be "
                    f"read as {leaf.shape[0]} tasks of one scalar each. Every task argument "
                    "needs a leading task dimension N before each task's data: did you pass one "
                    "task's data? Add the task dimension with x[None]. A per-task scalar (a task "
                    "id, say) needs shape (N, 1)."
                )


def _normalise_in_dims(in_dims: int | None | tuple, num_args: int) -> tuple:
    if isinstance(in_dims, tuple):
        if len(in_dims) != num_args:
            raise ValueError(f"in_dims has {len(in_dims)} entries for {num_args} arguments")
        bad = [d for d in in_dims if d not in (0, None)]
        if bad:
            raise ValueError(f"in_dims entries must be 0 (batched over tasks) or None, got {bad}")
        return in_dims
    if in_dims not in (0, None):
        raise ValueError(f"in_dims must be 0, None or a tuple of those, got {in_dims!r}")
    return (in_dims,) * num_args


def _slice_args(args, in_dims, index):
    return tuple(a if d is None else tree_index(a, index) for a, d in zip(args, in_dims))


def _auto_strategy(args: tuple, in_dims: tuple) -> str:
    """The strategy ``"auto"`` starts with: ``"vmap"`` or ``"loop"`` (see ``map_tasks``)."""
    if torch.compiler.is_compiling():
        return "vmap"  # a compiled per-task loop unrolls every task: very long compile times
    leaves = [leaf for a, d in zip(args, in_dims) if d is not None for leaf in tree_leaves(a)]
    if any(leaf.device.type != "cpu" for leaf in leaves):
        return "vmap"
    per_task = sum(leaf[0].numel() for leaf in leaves)
    return "loop" if per_task > _LOOP_ELEMENTS_PER_TASK else "vmap"


def map_tasks(
    fn: Callable[..., PyTree],
    *,
    in_dims: int | None | tuple = 0,
    strategy: Strategy = "auto",
    chunk_size: int | None = None,
) -> Callable[..., PyTree]:
    r"""Maps a per-task function over a task batch with a chosen execution strategy.

    A drop-in for ``torch.func.vmap`` over the leading (task) dimension, with the strategy
    as a choice, because the fastest one depends on the workload:

    - ``"vmap"``: all tasks in one batched computation; fastest for small, overhead-bound
      models (e.g. a sinusoid MLP: about 5x faster than a loop on CPU).
    - ``"chunked"``: ``vmap`` over ``chunk_size`` tasks at a time; bounds peak memory.
    - ``"loop"``: a Python loop over tasks; on CPU fastest and leanest for conv nets, whose
      per-task weights become slow grouped convolutions under ``vmap``.
    - ``"auto"`` (default): ``"loop"`` for CPU tensors when one task's data (the batched
      arguments) holds more than 16384 elements, else ``"vmap"``; always ``"vmap"`` on
      accelerators and while compiling. If ``"vmap"`` meets batch norm in a second-order
      inner loop (where torch's second-order gradient is wrong, see
      [metaops.inner.BatchNormUnderVmapError][]), it falls back to ``"loop"``.

    All strategies give the same values and gradients (up to float rounding).

    Args:
        fn: Per-task function; returns a pytree of tensors.
        in_dims: Per argument, ``0`` if batched over tasks or ``None`` if shared.
        strategy: One of ``"auto"``, ``"vmap"``, ``"chunked"``, ``"loop"``.
        chunk_size: Tasks per chunk for ``"chunked"``.

    Returns:
        A function of the same arguments returning outputs stacked over tasks.

    Raises:
        ValueError: For an unknown strategy, a bad ``chunk_size``, or task arguments that
            disagree on the number of tasks.

    Examples:
        >>> f = lambda w, x: (w * x).sum()
        >>> xs = torch.arange(6.0).reshape(3, 2)
        >>> map_tasks(f, in_dims=(None, 0), strategy="loop")(torch.ones(2), xs)
        tensor([1., 5., 9.])
    """
    _check_strategy(strategy, chunk_size)

    def batched(*args):
        with batch_norm_context():
            return _batched(*args)

    def _batched(*args):
        dims = _normalise_in_dims(in_dims, len(args))
        n = _num_tasks(args, dims)
        chosen = _auto_strategy(args, dims) if strategy == "auto" else strategy
        if chosen == "loop":
            return tree_stack([fn(*_slice_args(args, dims, i)) for i in range(n)])
        if chosen == "chunked":
            return torch.func.vmap(fn, in_dims=dims, chunk_size=chunk_size)(*args)
        if strategy == "vmap":
            return torch.func.vmap(fn, in_dims=dims)(*args)
        try:
            return torch.func.vmap(fn, in_dims=dims)(*args)
        except BatchNormUnderVmapError:
            _log.info("map_tasks: batch norm in a second-order inner loop; using strategy='loop'")
            note_eager_only(_BATCHNORM_FALLBACK)
            return tree_stack([fn(*_slice_args(args, dims, i)) for i in range(n)])

    return batched


def _check_scalar(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"task_loss_fn must return a scalar tensor per task, got {shape}")
    return loss


def unit_grad_fn(task_loss_fn: Callable[..., Tensor], strategy: str) -> Callable[..., tuple[PyTree, Tensor]]:
    """``(meta, *unit) -> (grads, losses)`` for one unit of work: the whole batch or a chunk
    (``"vmap"``/``"chunked"``, tasks stacked) or one task (``"loop"``); ``losses`` has one
    entry per task and the gradient is of their sum (private; shared with the compiled form)."""

    def chunk_sum(meta, *chunk):
        losses = torch.func.vmap(task_loss_fn, in_dims=(None,) + (0,) * len(chunk))(meta, *chunk)
        return losses.sum(), losses.detach()

    def one_sum(meta, *task):
        loss = _check_scalar(task_loss_fn(meta, *task))
        return loss, loss.detach().reshape(1)

    return torch.func.grad(one_sum if strategy == "loop" else chunk_sum, has_aux=True)


def accumulate_units(grad_fn, meta_params, task_args, n, strategy, chunk_size):
    """Sums ``grad_fn``'s gradients over the units of ``strategy`` (private)."""
    if strategy == "vmap":
        return grad_fn(meta_params, *task_args)
    step = chunk_size if strategy == "chunked" else 1
    total, losses = None, []
    for start in range(0, n, step):
        index = slice(start, min(start + step, n)) if strategy == "chunked" else start
        g, l = grad_fn(meta_params, *(tree_index(a, index) for a in task_args))
        total = g if total is None else tree_add(total, g)
        losses.append(l)
    return total, torch.cat(losses)


def _functional_strategy(task_loss_fn, meta_params, task_args, n, strategy, chunk_size):
    """Gradients with ``torch.func.grad``: works under transforms and ``torch.compile``."""
    grad_fn = unit_grad_fn(task_loss_fn, strategy)
    return accumulate_units(grad_fn, meta_params, task_args, n, strategy, chunk_size)


def _autograd_strategy(task_loss_fn, meta_params, task_args, n, strategy, chunk_size):
    """The same sums with ordinary autograd on private leaves (outside transforms only).

    Each task's (or chunk's) graph is freed by ``torch.autograd.grad`` before the next one is
    built: this is what a hand-written per-task autograd loop does, without
    ``torch.func.grad``'s per-call wrapping overhead. Unlike ``backward()``, it writes no
    ``.grad`` into tensors that ``task_loss_fn`` captures (a module's own parameters), just as
    the functional path does not. A leaf that no task's loss reaches raises ``ValueError``.
    """
    leaves, spec = tree_flatten(meta_params)
    inputs = [x.detach().requires_grad_() for x in leaves]
    meta = tree_unflatten(inputs, spec)
    dims = (0,) * len(task_args)
    step = {"vmap": n, "chunked": chunk_size, "loop": 1}[strategy]
    totals: list[Tensor | None] = [None] * len(inputs)
    losses = []
    for start in range(0, n, step):
        if strategy == "loop":
            loss = _check_scalar(task_loss_fn(meta, *(tree_index(a, start) for a in task_args)))
            losses.append(loss.detach().reshape(1))
        else:
            index = slice(start, min(start + step, n))
            chunk = tuple(tree_index(a, index) for a in task_args)
            per_task = torch.func.vmap(task_loss_fn, in_dims=(None, *dims))(meta, *chunk)
            loss = per_task.sum()
            losses.append(per_task.detach())
        if loss.requires_grad:
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
            totals = [t if g is None else g if t is None else t + g for t, g in zip(totals, grads)]
    unused = [name for name, total in zip(_leaf_names(meta_params), totals) if total is None]
    if unused:
        raise ValueError(
            f"meta_params {unused} do not affect any task's meta-loss, so their meta-gradient "
            "would silently be 0. torch.func.functional_call ignores names the module does not "
            "have (and uses the module's own tensor for a name the dict lacks): check the names "
            "against model.named_parameters(), or call the model with "
            "metaops.nn.functional_call, which checks names and shapes. Leave parameters that "
            "the loss does not use out of meta_params."
        )
    return tree_unflatten(totals, spec), torch.cat(losses)


def _leaf_names(tree: PyTree) -> list[str]:
    """Dotted names of a pytree's leaves (``"params.0.weight"``), in ``tree_leaves`` order."""

    def walk(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict):
            return [name for k, v in node.items() for name in walk(v, f"{prefix}{k}.")]
        if isinstance(node, (list, tuple)):
            return [name for i, v in enumerate(node) for name in walk(v, f"{prefix}{i}.")]
        return [prefix.rstrip(".") or "meta_params"]

    names = walk(tree, "")
    count = len(tree_leaves(tree))
    return names if len(names) == count else [f"leaf {i}" for i in range(count)]


def _use_autograd(meta_params: PyTree) -> bool:
    if under_transform() or not torch.is_grad_enabled():
        return False
    leaves = tree_leaves(meta_params)
    return bool(leaves) and all(isinstance(x, Tensor) and x.is_floating_point() for x in leaves)


def meta_value_and_grad(
    task_loss_fn: Callable[..., Tensor],
    meta_params: PyTree,
    *task_args: Any,
    strategy: Strategy = "auto",
    chunk_size: int | None = None,
    compile: bool = False,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> tuple[Tensor, PyTree]:
    r"""Returns the mean meta-loss over a task batch and its meta-gradient.

    $$\mathcal{J}(\theta) = \frac{1}{N}\sum_{i=1}^{N} \ell_i(\theta),\qquad
      \ell_i(\theta) = \texttt{task\_loss\_fn}(\theta, \text{task}_i),$$

    where ``task_loss_fn`` typically adapts with [metaops.inner.adapt][] on the support set
    and evaluates on the query set. The strategies of [metaops.map_tasks][] apply (including
    the rule for ``"auto"``); here ``"chunked"`` and ``"loop"`` also *accumulate gradients
    chunk by chunk*, so peak memory holds one chunk's graph, not the whole batch's.

    Outside ``torch.func`` transforms and ``torch.compile`` the sums are differentiated with
    ordinary autograd (each chunk's graph freed by its backward pass); inside them, with
    ``torch.func.grad``. Both give the same numbers and write no ``.grad`` anywhere, not
    even into tensors that ``task_loss_fn`` captures. ``meta_params`` are treated as leaves:
    the returned gradients are constants, not differentiable further.

    This is the one way to get a batched meta-gradient; batching and compilation are its
    options. ``compile=True`` compiles one *unit* of the strategy with ``torch.compile`` and
    runs the strategy's loop in Python: the whole vmapped batch for ``"vmap"`` (one graph),
    one chunk for ``"chunked"``, one task for ``"loop"`` (compile time of one task, exact batch
    norm; a compiled Python loop over 32 conv tasks did not finish compiling in minutes). The
    compiled units are cached per ``task_loss_fn``, so define it once, outside the training
    loop. Each unit's first call runs eagerly, its second compiles and is verified against an
    eager run; on a compiler failure or disagreement it stays eager with a
    ``RuntimeWarning`` (see [metaops.compile_meta_step][], which compiles any other function).

    Outside transforms and ``torch.compile`` it also checks the result: a NaN/inf meta-loss
    or meta-gradient raises instead of reaching the optimizer, and so does a meta-parameter
    that no task's loss uses (on the autograd path), the usual sign of a misspelt name that
    ``torch.func.functional_call`` silently ignored.

    **Many processes** (``process_group``, e.g. from [metaops.distributed.init][] under
    ``torchrun``): each process passes *its slice* of the task batch
    ([metaops.distributed.shard_tasks][]) and receives the mean loss and meta-gradient over the
    tasks of *all* processes, $\frac{1}{\sum_r N_r}\sum_r \sum_{i \le N_r} \ell_{r,i}$,
    equal to the one-process result on the whole batch up to float rounding. The per-process
    sums, the task counts and the loss travel in one flat ``all_reduce`` per call (per dtype),
    so every process gets the same numbers and can take the same optimizer step; a slice may
    be empty (fewer tasks than processes). A NaN/inf loss on any process raises on every
    process, naming the offending tasks by their index in the whole batch. No
    ``DistributedDataParallel`` is involved: gradients of gradients are computed locally and
    only the final meta-gradient is reduced.

    Args:
        task_loss_fn: ``task_loss_fn(meta_params, *task) -> scalar`` for one task.
        meta_params: Pytree of meta-parameters (e.g. ``{"params": ..., "lrs": ...}``).
        *task_args: Task data, every leaf with a leading task dimension ``N`` followed by at
            least one per-task dimension: a 1-D leaf of shape ``(K,)`` is refused, since it is
            what one task's data without its task dimension looks like (use ``x[None]``; give
            a per-task scalar the shape ``(N, 1)``).
        strategy: ``"auto"``, ``"vmap"``, ``"chunked"`` or ``"loop"``.
        chunk_size: Tasks per chunk for ``"chunked"``.
        compile: Compile the strategy's unit of work (see above).
        process_group: ``None`` (one process, the default) or the ``torch.distributed``
            process group whose tasks are averaged (see above). Every process of the group
            must call with the same ``meta_params`` structure.

    Returns:
        ``(mean_loss, grads)``: the meta-loss to **minimise** (detached) and its gradient,
        a pytree shaped like ``meta_params``.

    Raises:
        NonFiniteError: If some task's meta-loss is NaN or infinite (names the tasks), or the
            meta-gradient is (names the meta-parameters and the likely cause).
        ValueError: For bad strategies, inconsistent task batches, a 1-D task leaf, or
            meta-parameters that no task's loss uses (names them).

    Examples:
        >>> from metaops.inner import adapt, sgd
        >>> loss_fn = lambda p, b: ((b[0] * p["w"] - b[1]) ** 2).mean()
        >>> def task_loss(theta, support, query):
        ...     return loss_fn(adapt(loss_fn, theta, support, sgd(0.1), steps=1), query)
        >>> x = torch.tensor([[1.0, 2.0], [1.0, 1.0]]); y = 2 * x
        >>> loss, grads = meta_value_and_grad(task_loss, {"w": torch.tensor(0.0)}, (x, y), (x, y))
        >>> loss                 # mean of 2.5 and 2.56
        tensor(2.5300)
        >>> grads["w"]           # mean of -5 * 0.5 and -3.2 * 0.8
        tensor(-2.5300)
    """
    _check_strategy(strategy, chunk_size)
    if not task_args:
        raise ValueError("meta_value_and_grad needs task arguments with a leading task dimension")
    dims = (0,) * len(task_args)
    n = _num_tasks(task_args, dims, allow_empty=process_group is not None)
    _check_per_task_data(task_args)
    if process_group is not None:
        return _distributed_value_and_grad(task_loss_fn, meta_params, task_args, n, strategy, chunk_size, compile,
                                           process_group)
    if compile and not torch.compiler.is_compiling():
        return _compiled(task_loss_fn, strategy, chunk_size)(meta_params, *task_args)
    meta_params = stop_gradient(meta_params)
    run = _autograd_strategy if _use_autograd(meta_params) else _functional_strategy

    chosen = _auto_strategy(task_args, dims) if strategy == "auto" else strategy
    with batch_norm_context():
        grads, losses = _run_strategy(run, task_loss_fn, meta_params, task_args, n, strategy, chosen, chunk_size)
    return mean_over_tasks(losses, grads, n, check_finite=not torch.compiler.is_compiling())


def _distributed_value_and_grad(task_loss_fn, meta_params, task_args, n, strategy, chunk_size, compile, group):
    """This process's sums over its tasks, reduced over ``group`` in one flat bucket (private)."""
    meta_params = stop_gradient(meta_params)
    leaves, spec = tree_flatten(meta_params)
    reference = next((x for x in leaves if isinstance(x, Tensor) and x.is_floating_point()), torch.zeros(()))
    if n == 0:  # fewer tasks than processes: this one only takes part in the reduction
        losses = reference.new_zeros(0)
        loss_sum, grad_leaves = reference.new_zeros(()), [torch.zeros_like(x) for x in leaves]
    elif compile and not torch.compiler.is_compiling():
        mean_loss, grads = _compiled(task_loss_fn, strategy, chunk_size)(meta_params, *task_args)
        losses = mean_loss.reshape(1)  # per-task losses are not kept: the compiled step checked them
        loss_sum, grad_leaves = mean_loss * n, [g * n for g in tree_leaves(grads)]
    else:
        run = _autograd_strategy if _use_autograd(meta_params) else _functional_strategy
        chosen = _auto_strategy(task_args, (0,) * len(task_args)) if strategy == "auto" else strategy
        with batch_norm_context():
            grads, losses = _run_strategy(run, task_loss_fn, meta_params, task_args, n, strategy, chosen, chunk_size)
        loss_sum, grad_leaves = losses.sum(), tree_leaves(grads)
    me, size = rank(group), world_size(group)
    counts = reference.new_zeros(size)
    counts[me] = n
    loss_sum, counts, *grad_leaves = flat_all_reduce_sum([loss_sum.to(reference.dtype), counts, *grad_leaves], group)
    total = counts.sum()  # a tensor: no host sync inside torch.compile
    mean_loss, grads = loss_sum / total, tree_unflatten([g / total for g in grad_leaves], spec)
    if not torch.compiler.is_compiling():
        if int(total.item()) == 0:
            raise ValueError("meta_value_and_grad: no process of the group passed any task")
        if not bool(torch.isfinite(mean_loss)):
            offset, count = int(counts[:me].sum().item()), int(total.item())
            bad = (torch.nonzero(~torch.isfinite(losses)).flatten() + offset).tolist()
            where = f"tasks {bad} of {count} (indices in the whole batch)" if bad else "other processes' tasks"
            raise NonFiniteError(
                f"meta-loss is NaN/inf for {where}; if their inner loop diverges, lower the inner learning rate "
                "(or the number of inner steps), else check those tasks' data for NaN/inf"
            )
        _check_finite_grads(grads)
    return mean_loss, grads


def _run_strategy(run, task_loss_fn, meta_params, task_args, n, strategy, chosen, chunk_size):
    if strategy == "auto" and chosen == "vmap":
        try:
            grads, losses = run(task_loss_fn, meta_params, task_args, n, "vmap", None)
        except BatchNormUnderVmapError:
            _log.info("meta_value_and_grad: batch norm in a second-order loop; using 'loop'")
            note_eager_only(_BATCHNORM_FALLBACK)
            grads, losses = run(task_loss_fn, meta_params, task_args, n, "loop", None)
    else:
        grads, losses = run(task_loss_fn, meta_params, task_args, n, chosen, chunk_size)
    return grads, losses


def mean_over_tasks(losses: Tensor, grads: PyTree, n: int, *, check_finite: bool) -> tuple[Tensor, PyTree]:
    """``(mean loss, summed grads / n)``, raising ``NonFiniteError`` that names the NaN/inf
    tasks or, when every loss is finite, the NaN/inf meta-gradient leaves (private)."""
    if check_finite:
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise NonFiniteError(
                f"meta-loss is NaN/inf for tasks {bad} of {n}; if their inner loop diverges, "
                "lower the inner learning rate (or the number of inner steps), else check those "
                "tasks' data for NaN/inf"
            )
        _check_finite_grads(grads)
    return losses.mean(), tree_map(lambda g: g / n, grads)


def _check_finite_grads(grads: PyTree) -> None:
    leaves = [g for g in tree_leaves(grads) if isinstance(g, Tensor)]
    # One host sync: NaN/inf anywhere reaches this sum; an overflow of finite values can only
    # raise a false alarm, which the exact per-leaf check then clears.
    if not leaves or bool(torch.isfinite(sum(g.detach().sum() for g in leaves))):
        return
    bad = [
        name for name, g in zip(_leaf_names(grads), tree_leaves(grads))
        if isinstance(g, Tensor) and not bool(torch.isfinite(g).all())
    ]
    if bad:
        raise NonFiniteError(
            f"meta-gradient is NaN/inf for {bad} although every task's meta-loss is finite. "
            "Likely causes: an inner learning rate so large that the second-order terms "
            "overflow (lower it, or the number of inner steps), or the derivative of a square "
            "root at 0 inside the inner optimizer, e.g. a hand-written Adam or RMSProp without "
            "eps_root (metaops.inner.from_torchopt guards torchopt's)"
        )


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(task_loss_fn: Callable[..., Tensor], strategy: str, chunk_size: int | None):
    """The cached compiled meta-gradient of ``task_loss_fn`` for one strategy (private)."""
    from metaops._compile_tasks import CompiledMetaValueAndGrad

    try:
        per_fn = _COMPILED.setdefault(task_loss_fn, {})
    except TypeError:  # not weak-referenceable (rare): compile without caching
        per_fn = {}
    key = (strategy, chunk_size)
    if key not in per_fn:
        per_fn[key] = CompiledMetaValueAndGrad(
            task_loss_fn, strategy=strategy, chunk_size=chunk_size, verify=True,
            compile_kwargs={"fullgraph": True, "mode": None, "dynamic": False, "backend": "inductor"},
        )
    return per_fn[key]
