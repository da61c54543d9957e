"""Every differentiation mode x every optimizer: first and second derivatives against finite
differences (float64), the exact modes against each other, and the refusals."""

import pytest
import torch
import torch.nn.functional as F
import torchopt
from torch import nn
from torch.func import grad, vmap

import metaops as mo
from metaops.inner import (
    adapt,
    checkpointed,
    first_order,
    from_torchopt,
    implicit,
    meta_sgd,
    sgd,
    unrolled,
)
from metaops.inner._modes import Implicit
from tests._helpers import assert_trees_close, index_task, toy_regression

DT = torch.float64


def _lrs(theta):
    return {k: torch.full_like(v, 0.2) for k, v in theta.items()}


# name -> optimizer factory taking the meta-parameters (so Meta-SGD rates are meta-learned)
OPTIMIZERS = {
    "sgd": lambda meta: sgd(0.3),
    "sgd_tensor_lr": lambda meta: sgd(meta["lr"]),
    "meta_sgd": lambda meta: meta_sgd(meta["lrs"]),
    "torchopt_momentum": lambda meta: from_torchopt(torchopt.sgd(0.2, momentum=0.9)),
    "torchopt_adam": lambda meta: from_torchopt(torchopt.adam(0.05)),
}
EXACT_MODES = {"unrolled": unrolled(), "checkpointed": checkpointed()}


def _problem():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=1)
    s, q = index_task(support, 0), index_task(query, 0)
    meta = {"params": theta, "lr": torch.tensor(0.3, dtype=DT), "lrs": _lrs(theta)}
    return loss_fn, meta, s, q


def _meta_loss(loss_fn, s, q, opt_name, mode, steps=3):
    def meta_loss(meta):
        opt = OPTIMIZERS[opt_name](meta)
        return loss_fn(adapt(loss_fn, meta["params"], s, opt, steps=steps, mode=mode), q)

    return meta_loss


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("mode_name", sorted(EXACT_MODES))
def test_gradcheck_and_gradgradcheck_every_mode_and_optimizer(mode_name, opt_name):
    loss_fn, meta, s, q = _problem()
    meta_loss = _meta_loss(loss_fn, s, q, opt_name, EXACT_MODES[mode_name])
    key = "lrs" if opt_name == "meta_sgd" else "lr" if opt_name == "sgd_tensor_lr" else None

    def as_function_of(weight, hyper):
        params = dict(meta["params"], **{"0.weight": weight})
        m = dict(meta, params=params)
        if key == "lrs":
            m["lrs"] = dict(meta["lrs"], **{"0.weight": hyper})
        elif key == "lr":
            m["lr"] = hyper
        return meta_loss(m)

    w = meta["params"]["0.weight"].clone().requires_grad_()
    h = (meta["lrs"]["0.weight"] if key == "lrs" else meta["lr"]).clone().requires_grad_()
    assert torch.autograd.gradcheck(as_function_of, (w, h))
    # the gradient each exact mode returns is itself differentiated correctly (finite
    # differences of the backward pass): what TRPO / ProMP / Hessian-vector products need
    assert torch.autograd.gradgradcheck(as_function_of, (w, h))


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_checkpointed_equals_unrolled_at_first_and_second_order(opt_name):
    loss_fn, meta, s, q = _problem()
    unrolled_loss = _meta_loss(loss_fn, s, q, opt_name, unrolled(), steps=4)
    checkpointed_loss = _meta_loss(loss_fn, s, q, opt_name, checkpointed(), steps=4)
    assert_trees_close(grad(checkpointed_loss)(meta), grad(unrolled_loss)(meta))
    # a Hessian-vector product of the meta-loss (what TRPO / ProMP / hessian() differentiate)
    v = {k: torch.randn_like(x) for k, x in meta["params"].items()}

    def hvp(fn):
        def directional(params):
            g = grad(lambda p: fn(dict(meta, params=p)))(params)
            return sum((g[k] * v[k]).sum() for k in g)

        return grad(directional)(meta["params"])

    assert_trees_close(hvp(checkpointed_loss), hvp(unrolled_loss))


def test_checkpointed_second_order_under_vmap():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=3)

    def batch_loss(th, mode):
        per_task = vmap(lambda t, s, q: loss_fn(adapt(loss_fn, t, s, sgd(0.3), steps=3, mode=mode), q),
                        in_dims=(None, 0, 0))(th, support, query)
        return per_task.mean()

    def grad_norm_sq(th, mode):
        g = grad(batch_loss)(th, mode)
        return sum((x**2).sum() for x in g.values())

    assert_trees_close(grad(grad_norm_sq)(theta, checkpointed()), grad(grad_norm_sq)(theta, unrolled()))


def test_first_order_drops_exactly_the_inner_hessian():
    # phi = w - lr * stop(2 (w - b)); J = (phi - c)^2 -> dJ/dw = 2 (phi - c), d2J/dw2 = 2
    loss_fn = lambda p, b: ((p["w"] - b) ** 2).sum()
    w = torch.tensor([1.0], dtype=DT, requires_grad=True)

    def meta(w):
        phi = adapt(loss_fn, {"w": w}, torch.tensor([3.0], dtype=DT), sgd(0.25), steps=1, mode=first_order())
        return ((phi["w"] - 5.0) ** 2).sum()

    g = torch.autograd.grad(meta(w), w, create_graph=True)[0]
    assert g.item() == pytest.approx(2 * (2.0 - 5.0))
    assert torch.autograd.grad(g.sum(), w)[0].item() == pytest.approx(2.0)


def test_implicit_first_derivative_matches_dense_formula_and_second_raises():
    # quadratic inner loss 0.5 (p - b)^T A (p - b): phi* and d phi*/d theta are exact
    g = torch.Generator().manual_seed(0)
    m = torch.randn(3, 3, generator=g, dtype=DT)
    a = m @ m.T + torch.eye(3, dtype=DT)
    b = torch.randn(3, generator=g, dtype=DT)
    loss_fn = lambda p, batch: 0.5 * (p["w"] - batch) @ a @ (p["w"] - batch)
    reg = 2.0

    def meta(w):
        phi = adapt(loss_fn, {"w": w}, b, sgd(0.1), steps=400, mode=implicit(reg=reg, cg_steps=3))
        return (phi["w"] ** 3).sum()

    w = torch.randn(3, generator=g, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(meta, (w,), atol=1e-6)
    (gw,) = torch.autograd.grad(meta(w), w, create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives of the meta-loss only"):
        torch.autograd.grad(gw.sum(), w)


def test_implicit_refuses_learned_hyperparameters():
    loss_fn, meta, s, q = _problem()
    lrs = {k: v.clone().requires_grad_() for k, v in meta["lrs"].items()}
    with pytest.raises(ValueError, match=r"hyperparameters \['lrs\.0\.weight'.*need a meta-gradient"):
        adapt(loss_fn, meta["params"], s, meta_sgd(lrs), steps=2, mode=implicit(reg=1.0))
    # under torch.func.grad as well
    with pytest.raises(ValueError, match="need a meta-gradient"):
        grad(lambda r: loss_fn(adapt(loss_fn, meta["params"], s, meta_sgd(r), steps=2,
                                     mode=implicit(reg=1.0)), q))(meta["lrs"])
    # fixed (non-learned) rates are fine
    adapt(loss_fn, meta["params"], s, meta_sgd(meta["lrs"]), steps=2, mode=implicit(reg=1.0))


def test_modes_are_not_optimizer_wrappers():
    with pytest.raises(TypeError, match=r"mode=first_order\(\)"):
        first_order(sgd(0.1))
    with pytest.raises(TypeError, match=r"mode=checkpointed\(\)"):
        checkpointed(sgd(0.1))
    with pytest.raises(TypeError, match=r"mode=implicit\(reg=...\)"):
        implicit(sgd(0.1), reg=1.0)
    loss_fn = lambda p, b: (p["w"] ** 2).sum()
    with pytest.raises(TypeError, match=r"must be called: write mode=checkpointed\(\)"):
        adapt(loss_fn, {"w": torch.ones(1)}, None, sgd(0.1), steps=1, mode=checkpointed)
    with pytest.raises(TypeError, match="mode must be one of"):
        adapt(loss_fn, {"w": torch.ones(1)}, None, sgd(0.1), steps=1, mode="checkpointed")
    with pytest.raises(ValueError, match="reg > 0"):
        implicit(reg=0.0)


# --- standard BatchNorm (running statistics, train mode) ------------------------------------


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)).double()


def _bn_problem(num_tasks=3):
    model = _bn_net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(num_tasks, 6, 3, generator=g, dtype=DT)
    y = torch.randint(0, 2, (num_tasks, 6), generator=g)

    def loss_fn(params, batch):
        return F.cross_entropy(torch.func.functional_call(model, params, (batch[0],)), batch[1])

    theta = {k: v.detach() for k, v in model.named_parameters()}
    return model, loss_fn, theta, (x, y)


def _manual_batch_stat_loss(model, params, x, y):
    # the same network written out with batch statistics and no buffers (independent formula)
    h = x @ params["0.weight"].T + params["0.bias"]
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + model[1].eps)
    h = torch.relu(h * params["1.weight"] + params["1.bias"])
    return F.cross_entropy(h @ params["3.weight"].T + params["3.bias"], y)


@pytest.mark.parametrize("mode", [unrolled(), first_order(), checkpointed(), implicit(reg=5.0)],
                         ids=["unrolled", "first_order", "checkpointed", "implicit"])
def test_plain_batchnorm_works_in_every_mode_for_one_task(mode):
    model, loss_fn, theta, (x, y) = _bn_problem()
    s, q = (x[0], y[0]), (x[1], y[1])
    buffers = {k: v.clone() for k, v in model.named_buffers()}

    def meta(th):
        return loss_fn(adapt(loss_fn, th, s, sgd(0.1), steps=2, mode=mode), q)

    g = grad(meta)(theta)
    for k, v in model.named_buffers():  # running statistics untouched inside the loop
        assert torch.equal(v, buffers[k]), k
    if not isinstance(mode, Implicit):  # the same meta-gradient, written out by hand
        manual = lambda p, b: _manual_batch_stat_loss(model, p, *b)  # noqa: E731
        expected = grad(lambda th: manual(adapt(manual, th, s, sgd(0.1), steps=2, mode=mode), q))(theta)
        assert_trees_close(g, expected)


def test_plain_batchnorm_meta_value_and_grad_every_strategy_agrees():
    model, loss_fn, theta, (x, y) = _bn_problem()

    def task_loss(th, xs, ys):
        return loss_fn(adapt(loss_fn, th, (xs, ys), sgd(0.1), steps=1), (xs, ys))

    buffers = {k: v.clone() for k, v in model.named_buffers()}
    _, looped = mo.meta_value_and_grad(task_loss, theta, x, y, strategy="loop")
    _, auto = mo.meta_value_and_grad(task_loss, theta, x, y)  # vmap refused -> exact loop
    assert_trees_close(auto, looped)
    mo.map_tasks(lambda xs, ys: loss_fn(theta, (xs, ys)), strategy="loop")(x, y)
    for k, v in model.named_buffers():  # every strategy leaves the running statistics, as vmap must
        assert torch.equal(v, buffers[k]), k
    _, fo_vmap = mo.meta_value_and_grad(
        lambda th, xs, ys: loss_fn(adapt(loss_fn, th, (xs, ys), sgd(0.1), steps=1, mode=first_order()), (xs, ys)),
        theta, x, y, strategy="vmap")
    _, fo_loop = mo.meta_value_and_grad(
        lambda th, xs, ys: loss_fn(adapt(loss_fn, th, (xs, ys), sgd(0.1), steps=1, mode=first_order()), (xs, ys)),
        theta, x, y, strategy="loop")
    assert_trees_close(fo_vmap, fo_loop)


def test_batchnorm_outside_transforms_is_torchs_own():
    before = F.batch_norm
    model, loss_fn, theta, (x, y) = _bn_problem()
    adapt(loss_fn, theta, (x[0], y[0]), sgd(0.1), steps=1)
    assert F.batch_norm is before  # the vmap refusal is scoped to the inner loop
    model.train()
    out = model(x[0])  # outside transforms the running statistics update as usual
    assert int(model[1].num_batches_tracked) == 1
    h = x[0] @ model[0].weight.T + model[0].bias
    assert torch.allclose(model[1].running_mean, 0.1 * h.mean(0))
    model.eval()
    assert not torch.allclose(model(x[0]), out)  # eval mode reads the running statistics
