"""Gradient checkpointing through the inner loop (exact meta-gradient at every order)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from metaops.inner._adapt import checked_loss, unrolled_steps
from metaops.inner._base import InnerOptimizer
from metaops.inner._partial import with_frozen
from metaops.inner._validate import split_tensors, under_transform
from metaops.tree import tree_add, tree_flatten, tree_unflatten
from metaops.typing import LossFn, Params

__all__ = ["checkpointed_loop"]


def checkpointed_loop(
    loss_fn: LossFn, params: Params, batch: Any, optimizer: InnerOptimizer, steps: int,
    *, frozen: Params | None = None, names: list[str] | None = None,
) -> Params:
    """Runs ``steps`` checkpointed steps (see [metaops.inner.checkpointed][] for the maths).

    ``frozen`` parameters (partial adaptation) are inputs that the loss reads but the steps do
    not change; like the hyperparameters, they receive the adjoint of every step. ``names``
    orders all parameters for ``loss_fn``.
    """
    frozen = frozen or {}
    all_names = names if names is not None else list(params)
    names = list(params)
    frozen_names = list(frozen)
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
        frozen_names=frozen_names,
        all_names=all_names,
    )
    out = _CheckpointedLoop.apply(
        spec, *[params[n] for n in names], *hyper_leaves, *[frozen[n] for n in frozen_names], *tensors
    )
    return dict(zip(names, out[: len(names)]))


class _Spec(NamedTuple):
    loss_fn: Any
    optimizer: InnerOptimizer
    steps: int
    names: list
    hyper_spec: Any
    num_hyper: int
    rebuild_batch: Any
    check_finite: bool
    frozen_names: list
    all_names: list

    def split(self, inputs):
        n, h, f = len(self.names), self.num_hyper, len(self.frozen_names)
        params = dict(zip(self.names, inputs[:n]))
        hyper = tree_unflatten(list(inputs[n : n + h]), self.hyper_spec)
        frozen = dict(zip(self.frozen_names, inputs[n + h : n + h + f]))
        return params, hyper, frozen, self.rebuild_batch(inputs[n + h + f :])

    def loss(self, frozen):
        return with_frozen(self.loss_fn, frozen, self.all_names)


def _float_mask(leaves):
    return [isinstance(x, Tensor) and x.is_floating_point() for x in leaves]


class _CheckpointedLoop(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(spec: _Spec, *inputs: Tensor):
        params, hyper, frozen, batch = spec.split(inputs)
        opt = spec.optimizer
        state = opt.init(params)
        saved: list[Tensor] = []
        for k in range(spec.steps):
            params, state = unrolled_steps(
                spec.loss(frozen), params, batch, opt, state, hyper, 1, check_finite=spec.check_finite
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
        params0, hyper, frozen, batch = spec.split(inputs)
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

        def one_step(params, float_state, hyper_, frozen_, const_state):
            it = iter(float_state)
            leaves = [next(it) if f else c for f, c in zip(is_float, const_state)]
            state = tree_unflatten(leaves, state_spec)
            grads = torch.func.grad(lambda p: checked_loss(spec.loss(frozen_), p, batch))(params)
            new_params, new_state = opt.step(params, grads, state, hyper_)
            new_leaves, _ = tree_flatten(new_state)
            return new_params, [x for x, f in zip(new_leaves, is_float) if f]

        adj_params = {
            name: (g if g is not None else torch.zeros_like(inputs[i]))
            for i, (name, g) in enumerate(zip(spec.names, grad_outputs[:n]))
        }
        # The trajectory (phi_1..phi_{K-1} and their optimizer states) is also an output, saved
        # for this backward. When this backward is itself differentiated (a second derivative),
        # cotangents arrive on those outputs too: add each to the adjoint of its step.
        trajectory_cotangents = grad_outputs[n:]
        adj_state = None
        adj_hyper = None
        adj_frozen = None
        for k in reversed(range(spec.steps)):
            params_k, leaves_k = carry_at(k)
            float_state = [x for x, f in zip(leaves_k, is_float) if f]
            _, vjp_fn = torch.func.vjp(
                lambda p, s, h, fz: one_step(p, s, h, fz, leaves_k), params_k, float_state, hyper, frozen
            )
            if adj_state is None:
                adj_state = [torch.zeros_like(x) for x in float_state]
            adj_params, adj_state, g_hyper, g_frozen = vjp_fn((adj_params, adj_state))
            adj_hyper = g_hyper if adj_hyper is None else tree_add(adj_hyper, g_hyper)
            adj_frozen = g_frozen if adj_frozen is None else tree_add(adj_frozen, g_frozen)
            if k >= 1:  # phi_k and its state are trajectory chunk k - 1
                chunk = trajectory_cotangents[(k - 1) * (n + num_state) : k * (n + num_state)]
                adj_params = {
                    name: a if c is None else a + c
                    for (name, a), c in zip(adj_params.items(), chunk[:n])
                }
                state_cotangents = [c for c, t in zip(_tensor_slots(chunk[n:], is_tensor), is_float) if t]
                adj_state = [a if c is None else a + c for a, c in zip(adj_state, state_cotangents)]

        hyper_grads, _ = tree_flatten(adj_hyper)
        frozen_grads = [adj_frozen[name] for name in spec.frozen_names]
        num_batch = ctx.num_inputs - n - spec.num_hyper - len(frozen_grads)
        return (
            None, *[adj_params[name] for name in spec.names], *hyper_grads, *frozen_grads, *([None] * num_batch)
        )



def _tensor_slots(cotangents, is_tensor):
    """Spreads the cotangents of the saved tensor state leaves over all state leaves."""
    it = iter(cotangents)
    return [next(it) if t else None for t in is_tensor]
