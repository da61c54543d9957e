"""adapt through every optimizer: hand values, vmap == loop, torch.func == autograd, gradcheck."""

import pytest
import torch
import torchopt
from torch.func import grad, vmap

import metaops as mo
from metaops.inner import adapt, checkpointed, first_order, from_torchopt, meta_sgd, sgd
from tests._helpers import assert_trees_close, index_task, toy_regression

# name -> (optimizer factory, mode)
OPTIMIZERS = {
    "sgd": (lambda: sgd(0.3), None),
    "sgd_tensor_lr": (lambda: sgd(torch.tensor(0.3, dtype=torch.float64)), None),
    "first_order": (lambda: sgd(0.3), first_order()),
    "checkpointed": (lambda: sgd(0.3), checkpointed()),
    "torchopt_momentum": (lambda: from_torchopt(torchopt.sgd(0.2, momentum=0.9)), None),
    "torchopt_adam": (lambda: from_torchopt(torchopt.adam(0.05)), None),
    "checkpointed_adam": (lambda: from_torchopt(torchopt.adam(0.05)), checkpointed()),
}


def test_sgd_one_step_hand_value():
    # loss = (w - 3)^2, grad = 2 (w - 3); one step from w = 1 with lr 0.25 -> 1 + 0.25 * 4 = 2
    loss_fn = lambda p, b: ((p["w"] - b) ** 2).sum()
    phi = adapt(loss_fn, {"w": torch.tensor([1.0])}, torch.tensor([3.0]), sgd(0.25), steps=1)
    assert phi["w"].item() == pytest.approx(2.0)
    phi = adapt(loss_fn, {"w": torch.tensor([1.0])}, torch.tensor([3.0]), sgd(0.25), steps=2)
    assert phi["w"].item() == pytest.approx(2.5)  # 2 + 0.25 * 2


def test_momentum_hand_value():
    # torchopt momentum: buf = g (+ 0.9 buf), w -= lr * buf; loss (w - 1)^2 from 0
    loss_fn = lambda p, b: ((p["w"] - 1.0) ** 2).sum()
    phi = adapt(loss_fn, {"w": torch.tensor([0.0])}, None, from_torchopt(torchopt.sgd(0.1, momentum=0.9)), steps=2)
    # step 1: g=-2, buf=-2, w=0.2; step 2: g=-1.6, buf=-1.6-1.8=-3.4, w=0.54
    assert phi["w"].item() == pytest.approx(0.54)


def test_maml_meta_gradient_hand_value():
    # loss = 0.5 a w^2: one SGD step phi = (1 - lr a) w; query loss 0.5 b phi^2
    # d/dw = b (1 - lr a)^2 w
    a, b, lr, w = 3.0, 2.0, 0.1, 1.5
    theta = {"w": torch.tensor(w, requires_grad=True)}
    phi = adapt(lambda p, c: 0.5 * c * p["w"] ** 2, theta, torch.tensor(a), sgd(lr), steps=1)
    (0.5 * b * phi["w"] ** 2).backward()
    assert theta["w"].grad.item() == pytest.approx(b * (1 - lr * a) ** 2 * w)


def _task_loss(loss_fn, make_opt, steps):
    make_opt, mode = make_opt

    def task_loss(theta, support, query):
        return loss_fn(adapt(loss_fn, theta, support, make_opt(), steps=steps, mode=mode), query)

    return task_loss


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_vmap_equals_python_loop(name):
    _, loss_fn, theta, support, query = toy_regression()
    task_loss = _task_loss(loss_fn, OPTIMIZERS[name], steps=3)
    batched = grad(lambda th: vmap(task_loss, in_dims=(None, 0, 0))(th, support, query).mean())(theta)
    looped = grad(
        lambda th: torch.stack(
            [task_loss(th, index_task(support, i), index_task(query, i)) for i in range(4)]
        ).mean()
    )(theta)
    assert_trees_close(batched, looped)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_func_grad_equals_backward(name):
    _, loss_fn, theta, support, query = toy_regression(num_tasks=2)
    task_loss = _task_loss(loss_fn, OPTIMIZERS[name], steps=2)
    functional = grad(lambda th: vmap(task_loss, in_dims=(None, 0, 0))(th, support, query).mean())(theta)
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    vmap(task_loss, in_dims=(None, 0, 0))(leaves, support, query).mean().backward()
    assert_trees_close(functional, {k: v.grad for k, v in leaves.items()})


def _explicit_autograd_maml(loss_fn, theta, support, query, lr, steps):
    """The independent formulation: torch.autograd.grad(create_graph=True), task by task."""
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    total = 0.0
    num_tasks = support[0].shape[0]
    for i in range(num_tasks):
        params = dict(leaves)
        for _ in range(steps):
            loss = loss_fn(params, index_task(support, i))
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {k: v - lr * g for (k, v), g in zip(params.items(), grads)}
        total = total + loss_fn(params, index_task(query, i))
    grads = torch.autograd.grad(total / num_tasks, list(leaves.values()))
    return dict(zip(leaves, grads))


@pytest.mark.parametrize("strategy", ["vmap", "loop", "chunked"])
def test_meta_gradient_equals_explicit_autograd(strategy):
    _, loss_fn, theta, support, query = toy_regression()
    task_loss = _task_loss(loss_fn, (lambda: sgd(0.3), None), steps=3)
    kwargs = {"chunk_size": 3} if strategy == "chunked" else {}
    _, grads = mo.meta_value_and_grad(task_loss, theta, support, query, strategy=strategy, **kwargs)
    expected = _explicit_autograd_maml(loss_fn, theta, support, query, 0.3, 3)
    assert_trees_close(grads, expected)


def test_first_order_equals_query_gradient_at_adapted_point():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=1)
    s, q = index_task(support, 0), index_task(query, 0)
    fo = grad(lambda th: loss_fn(adapt(loss_fn, th, s, sgd(0.3), steps=3, mode=first_order()), q))(theta)
    phi = adapt(loss_fn, theta, s, sgd(0.3), steps=3)
    assert_trees_close(fo, grad(loss_fn)(phi, q))
    so = grad(lambda th: loss_fn(adapt(loss_fn, th, s, sgd(0.3), steps=3), q))(theta)
    assert max((fo[k] - so[k]).abs().max() for k in fo) > 1e-4  # second-order terms matter here


@pytest.mark.parametrize("name", ["sgd", "checkpointed", "torchopt_adam"])
def test_gradcheck_and_gradgradcheck_through_three_steps(name):
    _, loss_fn, theta, support, query = toy_regression(num_tasks=1)
    s, q = index_task(support, 0), index_task(query, 0)
    make_opt, mode = OPTIMIZERS[name]

    def meta_loss(weight):
        params = dict(theta, **{"0.weight": weight})
        return loss_fn(adapt(loss_fn, params, s, make_opt(), steps=3, mode=mode), q)

    w = theta["0.weight"].clone().requires_grad_()
    assert torch.autograd.gradcheck(meta_loss, (w,))
    assert torch.autograd.gradgradcheck(meta_loss, (w,))


def test_gradcheck_with_respect_to_learning_rate():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=1)
    s, q = index_task(support, 0), index_task(query, 0)

    def meta_loss(lr):
        return loss_fn(adapt(loss_fn, theta, s, sgd(lr), steps=3), q)

    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(meta_loss, (lr,))
    assert torch.autograd.gradgradcheck(meta_loss, (lr,))

    def checkpointed_meta_loss(lr):
        return loss_fn(adapt(loss_fn, theta, s, sgd(lr), steps=3, mode=checkpointed()), q)

    assert torch.autograd.gradcheck(checkpointed_meta_loss, (lr,))
    assert torch.autograd.gradgradcheck(checkpointed_meta_loss, (lr,))


@pytest.mark.parametrize("elementwise", [True, False])
def test_meta_sgd_learning_rates_get_the_right_gradient(elementwise):
    _, loss_fn, theta, support, query = toy_regression(num_tasks=1)
    s, q = index_task(support, 0), index_task(query, 0)
    lrs = {k: (torch.full_like(v, 0.2) if elementwise else torch.tensor(0.2, dtype=v.dtype)) for k, v in theta.items()}

    def meta_loss(meta, mode=None):
        return loss_fn(adapt(loss_fn, meta["params"], s, meta_sgd(meta["lrs"]), steps=2, mode=mode), q)

    meta = {"params": theta, "lrs": lrs}
    g = grad(meta_loss)(meta)
    # finite differences on one learning-rate entry
    eps = 1e-6
    key = "0.weight"
    bump = torch.zeros_like(lrs[key]).reshape(-1)
    bump[0] = eps
    bump = bump.reshape(lrs[key].shape)
    plus = meta_loss({"params": theta, "lrs": dict(lrs, **{key: lrs[key] + bump})})
    minus = meta_loss({"params": theta, "lrs": dict(lrs, **{key: lrs[key] - bump})})
    fd = (plus - minus) / (2 * eps)
    assert g["lrs"][key].reshape(-1)[0].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-10)
    # the checkpointed loop gives the same meta-gradient, lrs included
    g_ckpt = grad(lambda m: meta_loss(m, checkpointed()))(meta)
    assert_trees_close(g, g_ckpt)


def test_meta_sgd_hand_value_for_lr_gradient():
    # phi = w - a * 2 (w - 1); query loss phi; d/da = -2 (w - 1)
    lrs = {"w": torch.tensor(0.1, requires_grad=True)}
    phi = adapt(lambda p, b: ((p["w"] - 1) ** 2).sum(), {"w": torch.tensor([3.0])}, None, meta_sgd(lrs), steps=1)
    phi["w"].sum().backward()
    assert lrs["w"].grad.item() == pytest.approx(-4.0)


def test_adapt_does_not_mutate_inputs():
    _, loss_fn, theta, support, _ = toy_regression(num_tasks=1)
    before = {k: v.clone() for k, v in theta.items()}
    adapt(loss_fn, theta, index_task(support, 0), sgd(0.3), steps=2)
    assert_trees_close(theta, before, rtol=0, atol=0)


# --- has_aux: an output of each step's own forward pass ----------------------------------------


def _with_aux(model):
    """loss_fn returning (loss, aux): aux = (mean prediction, {"l1": mean |residual|}) of the same forward."""

    def loss_and_aux(params, batch):
        x, y = batch
        prediction = torch.func.functional_call(model, params, (x,))
        loss = ((prediction - y) ** 2).mean()  # loss_fn's value, from this forward
        return loss, (prediction.mean(), {"l1": (prediction - y).abs().mean()})

    def aux_fn(params, batch):  # the same aux, computed on its own
        x, y = batch
        prediction = torch.func.functional_call(model, params, (x,))
        return prediction.mean(), (prediction - y).abs().mean()

    return loss_and_aux, aux_fn


@pytest.mark.parametrize("mode", [None, first_order()], ids=["unrolled", "first_order"])
def test_has_aux_returns_each_steps_aux_and_the_same_params(mode):
    model, loss_fn, theta, support, _ = toy_regression(num_tasks=1)
    s = index_task(support, 0)
    loss_and_aux, aux_fn = _with_aux(model)
    phi, (mean, extra) = adapt(loss_and_aux, theta, s, sgd(0.3), steps=3, mode=mode, has_aux=True)
    assert_trees_close(phi, adapt(loss_fn, theta, s, sgd(0.3), steps=3, mode=mode), rtol=0, atol=0)
    assert mean.shape == (3,) and extra["l1"].shape == (3,)
    for k in range(3):  # aux[k] is taken at phi_k, the params before step k + 1
        phi_k = theta if k == 0 else adapt(loss_fn, theta, s, sgd(0.3), steps=k, mode=mode)
        expected_mean, expected_l1 = aux_fn(phi_k, s)
        torch.testing.assert_close(mean[k], expected_mean)
        torch.testing.assert_close(extra["l1"][k], expected_l1)


def test_has_aux_is_differentiable_in_params_at_every_order():
    model, loss_fn, theta, support, query = toy_regression(num_tasks=1)
    s, q = index_task(support, 0), index_task(query, 0)
    loss_and_aux, aux_fn = _with_aux(model)

    def meta_loss(weight):  # query loss after 2 steps plus the mean prediction at phi_0 and phi_1
        params = dict(theta, **{"0.weight": weight})
        phi, (mean, _) = adapt(loss_and_aux, params, s, sgd(0.3), steps=2, has_aux=True)
        return loss_fn(phi, q) + mean.sum()

    def independent(weight):  # the same from aux_fn and separate adapt calls
        params = dict(theta, **{"0.weight": weight})
        phi_1 = adapt(loss_fn, params, s, sgd(0.3), steps=1)
        phi_2 = adapt(loss_fn, params, s, sgd(0.3), steps=2)
        return loss_fn(phi_2, q) + aux_fn(params, s)[0] + aux_fn(phi_1, s)[0]

    w = theta["0.weight"].clone().requires_grad_()
    assert torch.autograd.gradcheck(meta_loss, (w,))
    assert torch.autograd.gradgradcheck(meta_loss, (w,))
    torch.testing.assert_close(torch.func.grad(meta_loss)(w), torch.func.grad(independent)(w))


def test_has_aux_under_vmap_equals_loop_and_with_only():
    model, loss_fn, theta, support, _ = toy_regression(num_tasks=3)
    loss_and_aux, _ = _with_aux(model)

    def task(th, s):
        phi, (mean, extra) = adapt(loss_and_aux, th, s, sgd(0.3), steps=2, only="2.*", has_aux=True)
        return phi["2.weight"].sum() + mean.sum() + extra["l1"].sum()

    batched = grad(lambda th: vmap(task, in_dims=(None, 0))(th, support).sum())(theta)
    looped = grad(lambda th: sum(task(th, index_task(support, i)) for i in range(3)))(theta)
    assert_trees_close(batched, looped)


def test_has_aux_errors():
    model, loss_fn, theta, support, _ = toy_regression(num_tasks=1)
    s = index_task(support, 0)
    loss_and_aux, _ = _with_aux(model)
    with pytest.raises(TypeError, match=r"must return a pair \(loss, aux\)"):
        adapt(loss_fn, theta, s, sgd(0.3), steps=1, has_aux=True)
    with pytest.raises(TypeError, match="pass has_aux=True"):
        adapt(loss_and_aux, theta, s, sgd(0.3), steps=1)
    with pytest.raises(ValueError, match="has_aux=True is supported in the unrolled and first_order modes"):
        adapt(loss_and_aux, theta, s, sgd(0.3), steps=1, mode=checkpointed(), has_aux=True)
    with pytest.raises(TypeError, match="has_aux must be a bool"):
        adapt(loss_and_aux, theta, s, sgd(0.3), steps=1, has_aux=1)
