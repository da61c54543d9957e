"""Gradient checkpointing through the inner loop (exact meta-gradient, bounded activations)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from metaops.inner._adapt import checked_loss, unrolled_steps
from metaops.inner._base import InnerOptimizer
from metaops.inner._validate import split_tensors, under_transform
from metaops.tree import tree_add, tree_flatten, tree_unflatten
from metaops.typing import LossFn, Params

__all__ = ["checkpointed"]


def checkpointed(optimizer: InnerOptimizer) -> InnerOptimizer:
    r"""Runs the inner loop with gradient checkpointing: exact meta-gradient, less memory.

    The forward pass keeps only the parameters (and optimizer state) after each step,
    $\phi_0, \dots, \phi_{K-1}$, without any autograd graph. The backward pass walks the steps
    in reverse, recomputing one step at a time and pulling the adjoint back through it:

    $$\bar\phi_{k} = \Big(\frac{\partial \phi_{k+1}}{\partial \phi_k}\Big)^{\!\top} \bar\phi_{k+1},
      \qquad \bar h \mathrel{+}= \Big(\frac{\partial \phi_{k+1}}{\partial h}\Big)^{\!\top}
      \bar\phi_{k+1},$$

    where $h$ are the optimizer's tensor ``hyperparams`` (e.g. Meta-SGD rates). The result is
    the same meta-gradient as the full unroll; memory holds $K$ parameter copies plus the
    activations of a single step, instead of the activations of all $K$ steps, at the price of
    recomputing each step once more.

    Meta-gradients flow to the initial parameters and to the optimizer's ``hyperparams``; the
    support ``batch`` and anything ``loss_fn`` captures are treated as constants.
    Works under ``torch.func.grad``, ``torch.func.vmap`` and ``.backward()``.

    Args:
        optimizer: A plain or [metaops.inner.first_order][] optimizer to run checkpointed.

    Returns:
        An [metaops.inner.InnerOptimizer][] for [metaops.inner.adapt][].

    Raises:
        ValueError: If ``optimizer`` already has a custom loop (implicit, checkpointed).

    Examples:
        >>> import torch
        >>> from metaops.inner import adapt, sgd
        >>> loss_fn = lambda p, b: ((p["w"] - b) ** 4).sum()
        >>> theta = {"w": torch.tensor([0.0, 1.0], requires_grad=True)}
        >>> phi = adapt(loss_fn, theta, torch.ones(2), checkpointed(sgd(0.1)), steps=5)
        >>> loss_fn(phi, torch.ones(2)).backward()
        >>> theta2 = {"w": torch.tensor([0.0, 1.0], requires_grad=True)}
        >>> loss_fn(adapt(loss_fn, theta2, torch.ones(2), sgd(0.1), steps=5),
        ...         torch.ones(2)).backward()
        >>> torch.allclose(theta["w"].grad, theta2["w"].grad)
        True
    """
    if not isinstance(optimizer, InnerOptimizer):
        raise TypeError(f"checkpointed expects an InnerOptimizer, got {type(optimizer).__name__}")
    if optimizer.loop is not None:
        raise ValueError(f"checkpointed cannot wrap {optimizer.name}: it already has its own loop")

    def loop(loss_fn: LossFn, params: Params, batch: Any, steps: int) -> Params:
        names = list(params)
        hyper_leaves, hyper_spec = tree_flatten(optimizer.hyperparams)
        tensors, rebuild_batch = split_tensors(batch)
        spec = _Spec(
            loss_fn=loss_fn,
            optimizer=optimizer,
            steps=steps,
            names=names,
            hyper_spec=hyper_spec,
            num_hyper=len(hyper_leaves),
            rebuild_batch=rebuild_batch,
            check_finite=not under_transform(),
        )
        out = _CheckpointedLoop.apply(spec, *[params[n] for n in names], *hyper_leaves, *tensors)
        return dict(zip(names, out[: len(names)]))

    return InnerOptimizer(
        init=optimizer.init,
        step=optimizer.step,
        hyperparams=optimizer.hyperparams,
        loop=loop,
        name=f"checkpointed({optimizer.name})",
        second_order=optimizer.second_order,
    )


class _Spec(NamedTuple):
    loss_fn: Any
    optimizer: InnerOptimizer
    steps: int
    names: list
    hyper_spec: Any
    num_hyper: int
    rebuild_batch: Any
    check_finite: bool

    def split(self, inputs):
        n, h = len(self.names), self.num_hyper
        params = dict(zip(self.names, inputs[:n]))
        hyper = tree_unflatten(list(inputs[n : n + h]), self.hyper_spec)
        return params, hyper, self.rebuild_batch(inputs[n + h :])


def _float_mask(leaves):
    return [isinstance(x, Tensor) and x.is_floating_point() for x in leaves]


class _CheckpointedLoop(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(spec: _Spec, *inputs: Tensor):
        params, hyper, batch = spec.split(inputs)
        opt = spec.optimizer
        state = opt.init(params)
        saved: list[Tensor] = []
        for k in range(spec.steps):
            params, state = unrolled_steps(
                spec.loss_fn, params, batch, opt, state, hyper, 1, check_finite=spec.check_finite
            )
            if k < spec.steps - 1:
                state_leaves, _ = tree_flatten(state)
                saved.extend(params[n] for n in spec.names)
                saved.extend(x for x in state_leaves if isinstance(x, Tensor))
        return tuple(params[n] for n in spec.names) + tuple(saved)

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec, *tensor_inputs = inputs
        ctx.spec = spec
        ctx.save_for_backward(*tensor_inputs, *output[len(spec.names) :])
        ctx.num_inputs = len(tensor_inputs)

    @staticmethod
    def backward(ctx, *grad_outputs):
        spec: _Spec = ctx.spec
        saved = ctx.saved_tensors
        inputs, trajectory = saved[: ctx.num_inputs], saved[ctx.num_inputs :]
        params0, hyper, batch = spec.split(inputs)
        opt = spec.optimizer
        n = len(spec.names)

        state0 = opt.init(params0)
        state_leaves0, state_spec = tree_flatten(state0)
        is_tensor = [isinstance(x, Tensor) for x in state_leaves0]
        is_float = _float_mask(state_leaves0)
        num_state = sum(is_tensor)

        def carry_at(k: int):
            if k == 0:
                return params0, state_leaves0
            chunk = trajectory[(k - 1) * (n + num_state) : k * (n + num_state)]
            params = dict(zip(spec.names, chunk[:n]))
            it = iter(chunk[n:])
            leaves = [next(it) if t else c for t, c in zip(is_tensor, state_leaves0)]
            return params, leaves

        def one_step(params, float_state, hyper_, const_state):
            it = iter(float_state)
            leaves = [next(it) if f else c for f, c in zip(is_float, const_state)]
            state = tree_unflatten(leaves, state_spec)
            grads = torch.func.grad(lambda p: checked_loss(spec.loss_fn, p, batch))(params)
            new_params, new_state = opt.step(params, grads, state, hyper_)
            new_leaves, _ = tree_flatten(new_state)
            return new_params, [x for x, f in zip(new_leaves, is_float) if f]

        adj_params = {
            name: (g if g is not None else torch.zeros_like(inputs[i]))
            for i, (name, g) in enumerate(zip(spec.names, grad_outputs[:n]))
        }
        adj_state = None
        adj_hyper = None
        for k in reversed(range(spec.steps)):
            params_k, leaves_k = carry_at(k)
            float_state = [x for x, f in zip(leaves_k, is_float) if f]
            _, vjp_fn = torch.func.vjp(
                lambda p, s, h: one_step(p, s, h, leaves_k), params_k, float_state, hyper
            )
            if adj_state is None:
                adj_state = [torch.zeros_like(x) for x in float_state]
            adj_params, adj_state, g_hyper = vjp_fn((adj_params, adj_state))
            adj_hyper = g_hyper if adj_hyper is None else tree_add(adj_hyper, g_hyper)

        hyper_grads, _ = tree_flatten(adj_hyper)
        num_batch = ctx.num_inputs - n - spec.num_hyper
        return (None, *[adj_params[name] for name in spec.names], *hyper_grads, *([None] * num_batch))

