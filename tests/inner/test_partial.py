"""adapt(..., only=pattern): ANIL and BOIL against independent hand-written loops, in every mode."""

import pytest
import torch
from torch.func import vmap

import metaops as mo
from metaops.inner import adapt, checkpointed, first_order, implicit, meta_sgd, sgd
from metaops.tree import tree_ravel
from tests._helpers import assert_trees_close, index_task

LR, STEPS, REG = 0.2, 3, 1.0
SPLITS = {"anil": ("head.*", "head."), "boil": ("body.*", "body.")}  # pattern, prefix of the adapted names


def _problem(num_tasks=3, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    theta = {"body.weight": randn(4, 1), "body.bias": randn(4), "head.weight": 0.5 * randn(1, 4),
             "head.bias": randn(1)}

    def loss_fn(params, batch):
        x, y = batch
        h = torch.tanh(x @ params["body.weight"].T + params["body.bias"])
        return ((h @ params["head.weight"].T + params["head.bias"] - y) ** 2).mean()

    def data():
        x = randn(num_tasks, 6, 1)
        return x, torch.sin(2 * x) + 0.1 * randn(num_tasks, 6, 1)

    return loss_fn, theta, data(), data()


def _leaves(theta):
    return {k: v.clone().requires_grad_() for k, v in theta.items()}


def _reference_unrolled(loss_fn, theta, support, query, prefix, *, first_order_=False):
    """Split, loop with autograd.grad(create_graph=True) by hand, merge: no metaops in the loop."""
    frozen = {k: v for k, v in theta.items() if not k.startswith(prefix)}
    phi = {k: v for k, v in theta.items() if k.startswith(prefix)}
    for _ in range(STEPS):
        loss = loss_fn({**frozen, **phi}, support)
        grads = torch.autograd.grad(loss, list(phi.values()), create_graph=not first_order_)
        phi = {k: v - LR * (g.detach() if first_order_ else g) for (k, v), g in zip(phi.items(), grads)}
    return loss_fn({**frozen, **phi}, query)


def _reference_implicit(loss_fn, theta, support, query, prefix):
    r"""The implicit gradient by dense linear algebra at a proximal solution found by hand.

    With $F(a, f) = \nabla_a L(a, f) + \lambda (a - \theta_A) = 0$:
    $\bar\theta_A = (I + H_{aa}/\lambda)^{-1} g_a$ and
    $\bar f = g_f - \frac{1}{\lambda} H_{af}^\top (I + H_{aa}/\lambda)^{-1} g_a$.
    """
    names_a = [k for k in theta if k.startswith(prefix)]
    names_f = [k for k in theta if not k.startswith(prefix)]
    a0, unravel_a = tree_ravel({k: theta[k] for k in names_a})
    f0, unravel_f = tree_ravel({k: theta[k] for k in names_f})

    def support_loss(a, f):
        return loss_fn({**unravel_a(a), **unravel_f(f)}, support)

    a = a0.clone()
    for _ in range(500):  # plain gradient descent on the (strongly convex near a0) proximal problem
        a = a - 0.1 * (torch.func.grad(support_loss)(a, f0) + REG * (a - a0))
    a = a.detach()
    h_aa = torch.func.hessian(support_loss, argnums=0)(a, f0)
    h_af = torch.func.jacrev(torch.func.grad(support_loss, argnums=0), argnums=1)(a, f0)
    g_a, g_f = torch.func.grad(lambda a, f: loss_fn({**unravel_a(a), **unravel_f(f)}, query), argnums=(0, 1))(a, f0)
    v = torch.linalg.solve(torch.eye(len(a0), dtype=a0.dtype) + h_aa / REG, g_a)
    return {**unravel_a(v), **unravel_f(g_f - h_af.T @ v / REG)}


def _meta_grad(task_loss, theta, support, query):
    leaves = _leaves(theta)
    n = support[0].shape[0]
    total = sum(task_loss(leaves, index_task(support, i), index_task(query, i)) for i in range(n)) / n
    return dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()))))


MODES = {"unrolled": None, "first_order": first_order(), "checkpointed": checkpointed()}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("mode", MODES)
def test_equals_hand_written_split_and_merge(split, mode):
    loss_fn, theta, support, query = _problem()
    pattern, prefix = SPLITS[split]

    def task_loss(params, s, q):
        return loss_fn(adapt(loss_fn, params, s, sgd(LR), steps=STEPS, mode=MODES[mode], only=pattern), q)

    def reference(params, s, q):
        return _reference_unrolled(loss_fn, params, s, q, prefix, first_order_=mode == "first_order")

    got, want = _meta_grad(task_loss, theta, support, query), _meta_grad(reference, theta, support, query)
    assert_trees_close(got, want)
    assert all(g.abs().sum() > 0 for g in got.values())  # frozen parameters get a meta-gradient too


@pytest.mark.parametrize("split", SPLITS)
def test_implicit_equals_dense_implicit_function_theorem(split):
    loss_fn, theta, support, query = _problem(num_tasks=2)
    pattern, prefix = SPLITS[split]
    mode = implicit(reg=REG, cg_steps=10)  # CG is exact in <= 5 (ANIL) or 8 (BOIL) iterations

    def task_loss(params, s, q):
        return loss_fn(adapt(loss_fn, params, s, sgd(0.1), steps=500, mode=mode, only=pattern), q)

    got = _meta_grad(task_loss, theta, support, query)
    n = support[0].shape[0]
    per_task = [_reference_implicit(loss_fn, theta, index_task(support, i), index_task(query, i), prefix)
                for i in range(n)]
    want = {k: sum(t[k] for t in per_task) / n for k in theta}
    assert_trees_close(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("mode", ["unrolled", "first_order", "checkpointed", "implicit"])
def test_vmap_over_tasks_equals_loop(split, mode):
    loss_fn, theta, support, query = _problem(num_tasks=4)
    pattern, _ = SPLITS[split]
    mode_ = {**MODES, "implicit": implicit(reg=REG, cg_steps=5)}[mode]

    def task_loss(params, s, q):
        return loss_fn(adapt(loss_fn, params, s, sgd(LR), steps=STEPS, mode=mode_, only=pattern), q)

    leaves = _leaves(theta)
    batched = vmap(task_loss, in_dims=(None, 0, 0))(leaves, support, query).mean()
    got = dict(zip(leaves, torch.autograd.grad(batched, list(leaves.values()))))
    assert_trees_close(got, _meta_grad(task_loss, theta, support, query))


@pytest.mark.parametrize("mode", ["unrolled", "checkpointed"])
def test_gradcheck_through_a_partial_step(mode):
    # the meta-loss as a function of one frozen (body) and one adapted (head) tensor, float64
    loss_fn, theta, support, query = _problem(num_tasks=1)
    s, q = index_task(support, 0), index_task(query, 0)

    def meta_loss(body_weight, head_weight):
        params = {**theta, "body.weight": body_weight, "head.weight": head_weight}
        phi = adapt(loss_fn, params, s, sgd(LR), steps=2, mode=MODES[mode], only="head.*")
        return loss_fn(phi, q)

    inputs = (theta["body.weight"].clone().requires_grad_(), theta["head.weight"].clone().requires_grad_())
    assert torch.autograd.gradcheck(meta_loss, inputs)
    assert torch.autograd.gradgradcheck(meta_loss, inputs)


def test_frozen_parameters_come_back_unchanged_in_order():
    loss_fn, theta, support, _ = _problem(num_tasks=1)
    phi = adapt(loss_fn, theta, index_task(support, 0), sgd(LR), steps=2, only="head.*")
    assert list(phi) == list(theta)
    assert phi["body.weight"] is theta["body.weight"] and phi["body.bias"] is theta["body.bias"]
    assert not torch.equal(phi["head.weight"], theta["head.weight"])


def test_several_patterns_and_a_pattern_matching_everything():
    loss_fn, theta, support, _ = _problem(num_tasks=1)
    s = index_task(support, 0)
    phi = adapt(loss_fn, theta, s, sgd(LR), steps=1, only=["head.bias", "body.w*"])
    assert phi["head.weight"] is theta["head.weight"] and phi["body.bias"] is theta["body.bias"]
    assert phi["head.bias"] is not theta["head.bias"] and phi["body.weight"] is not theta["body.weight"]
    assert_trees_close(adapt(loss_fn, theta, s, sgd(LR), steps=2, only="*"), adapt(loss_fn, theta, s, sgd(LR), steps=2))


def test_meta_sgd_rates_are_keyed_by_the_adapted_names():
    loss_fn, theta, support, query = _problem(num_tasks=1)
    s, q = index_task(support, 0), index_task(query, 0)
    lrs = {"head.weight": torch.tensor(0.1, dtype=torch.float64, requires_grad=True),
           "head.bias": torch.tensor(0.2, dtype=torch.float64, requires_grad=True)}
    loss_fn(adapt(loss_fn, theta, s, meta_sgd(lrs), steps=2, only="head.*"), q).backward()
    assert all(lr.grad is not None and lr.grad != 0 for lr in lrs.values())


def test_pattern_errors_name_the_parameters():
    loss_fn, theta, support, _ = _problem(num_tasks=1)
    s = index_task(support, 0)
    with pytest.raises(ValueError, match=r"\['classifier\.\*'\] match no parameter.*'body\.weight', 'body\.bias'"):
        adapt(loss_fn, theta, s, sgd(LR), steps=1, only="classifier.*")
    with pytest.raises(ValueError, match=r"\['4\.weight'\]"):
        adapt(loss_fn, theta, s, sgd(LR), steps=1, only=["head.*", "4.weight"])
    with pytest.raises(ValueError, match="match no parameter"):  # case-sensitive
        adapt(loss_fn, theta, s, sgd(LR), steps=1, only="HEAD.*")
    for bad in ([], 3, ["head.*", 3], {"head.*"}):
        with pytest.raises(TypeError, match="only= takes a glob pattern"):
            adapt(loss_fn, theta, s, sgd(LR), steps=1, only=bad)


def test_unused_adapted_parameter_is_still_refused():
    loss_fn, theta, support, _ = _problem(num_tasks=1)
    params = {**theta, "extra": torch.zeros(2, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"does not depend on params \['extra'\]"):
        adapt(loss_fn, params, index_task(support, 0), sgd(LR), steps=1, only=["head.*", "extra"])
    adapt(loss_fn, params, index_task(support, 0), sgd(LR), steps=1, only="head.*")  # frozen, unused: fine


@pytest.mark.parametrize("mode", ["unrolled", "first_order", "checkpointed", "implicit"])
def test_meta_value_and_grad_strategies_agree(mode):  # torch.func.grad over vmap == the per-task loop
    loss_fn, theta, support, query = _problem(num_tasks=4)
    mode_ = {**MODES, "implicit": implicit(reg=REG, cg_steps=5)}[mode]

    def task_loss(params, s, q):
        return loss_fn(adapt(loss_fn, params, s, sgd(LR), steps=STEPS, mode=mode_, only="body.*"), q)

    _, looped = mo.meta_value_and_grad(task_loss, theta, support, query, strategy="loop")
    _, batched = mo.meta_value_and_grad(task_loss, theta, support, query, strategy="vmap")
    assert_trees_close(batched, looped)
