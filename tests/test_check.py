"""check_meta_grad judges every meta-gradient metaops can produce, and says why when it cannot."""

import pytest
import torch

import metaops as mo
from metaops.estimators import dice_objective
from metaops.inner import InnerOptimizer, adapt, checkpointed, first_order, implicit, meta_sgd, sgd
from tests._helpers import toy_regression
from tests.estimators._tiny_mdp import make_mdp

LR, STEPS = 0.5, 2


def _problem(num_tasks=3):
    # float32 on purpose: check_meta_grad casts parameters and data to float64 itself.
    _, loss_fn, theta, support, query = toy_regression(num_tasks=num_tasks, dtype=torch.float32)

    def task_loss(meta, support, query, mode=None):
        return loss_fn(adapt(loss_fn, meta, support, sgd(LR), steps=STEPS, mode=mode), query)

    def fo_task_loss(meta, support, query):
        return task_loss(meta, support, query, mode=first_order())

    return loss_fn, task_loss, fo_task_loss, theta, support, query


@pytest.mark.parametrize("mode", [None, checkpointed()], ids=["unrolled", "checkpointed"])
def test_correct_second_order_maml_matches(mode):
    _, task_loss, fo_task_loss, theta, s, q = _problem()
    report = mo.check_meta_grad(lambda m, s, q: task_loss(m, s, q, mode), theta, s, q,
                                first_order_fn=fo_task_loss)
    assert report.matches_finite_differences and report.finite, report
    assert not report.second_order_missing and report.value_depends_on_theta
    assert "matches finite differences" in str(report)
    assert "it has the second-order terms" in str(report)


def test_metaops_gradient_in_float32_passed_explicitly_matches():
    _, task_loss, _, theta, s, q = _problem()
    _, grads = mo.meta_value_and_grad(task_loss, theta, s, q)
    assert next(iter(grads.values())).dtype == torch.float32
    assert mo.check_meta_grad(task_loss, theta, s, q, meta_grad=grads).matches_finite_differences


def test_first_order_gradient_is_reported_as_missing_second_order_terms():
    _, task_loss, fo_task_loss, theta, s, q = _problem()
    _, fo = mo.meta_value_and_grad(fo_task_loss, theta, s, q)
    report = mo.check_meta_grad(task_loss, theta, s, q, meta_grad=fo, first_order_fn=fo_task_loss)
    assert report.second_order_missing and not report.matches_finite_differences
    assert "second-order terms are missing" in str(report)


def test_forgotten_create_graph_is_diagnosed():
    loss_fn, task_loss, fo_task_loss, theta, s, q = _problem()
    # The classic bug: the inner gradients are taken without create_graph=True.
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    n = s[0].shape[0]
    for i in range(n):
        phi = dict(leaves)
        for _ in range(STEPS):
            grads = torch.autograd.grad(loss_fn(phi, mo.tree.tree_index(s, i)), list(phi.values()))
            phi = {k: v - LR * g for (k, v), g in zip(phi.items(), grads)}
        (loss_fn(phi, mo.tree.tree_index(q, i)) / n).backward()
    buggy = {k: v.grad for k, v in leaves.items()}
    report = mo.check_meta_grad(task_loss, theta, s, q, meta_grad=buggy, first_order_fn=fo_task_loss)
    assert report.second_order_missing and "second-order terms are missing" in report.verdict


def test_garbage_is_wrong():
    _, task_loss, fo_task_loss, theta, s, q = _problem()
    garbage = {k: torch.randn_like(v) for k, v in theta.items()}
    report = mo.check_meta_grad(task_loss, theta, s, q, meta_grad=garbage, first_order_fn=fo_task_loss)
    assert "WRONG" in report.verdict and not report.matches_finite_differences
    assert report.finite and report.value_depends_on_theta and not report.second_order_missing


def test_anil_gradient_is_checked_for_what_the_task_loss_adapts():
    loss_fn, task_loss, _, theta, s, q = _problem()

    def anil_task_loss(meta, support, query):  # body shared, only the last layer adapted
        body = {k: v for k, v in meta.items() if not k.startswith("2.")}
        head = {k: v for k, v in meta.items() if k.startswith("2.")}
        head = adapt(lambda h, b: loss_fn({**body, **h}, b), head, support, sgd(LR), steps=STEPS)
        return loss_fn({**body, **head}, query)

    report = mo.check_meta_grad(anil_task_loss, theta, s, q)
    assert report.matches_finite_differences, report
    _, maml_grad = mo.meta_value_and_grad(task_loss, theta, s, q)  # adapts every parameter
    assert "WRONG" in str(mo.check_meta_grad(anil_task_loss, theta, s, q, meta_grad=maml_grad))


@pytest.mark.parametrize("mode", [None, checkpointed(), implicit(reg=1.0, cg_steps=10)],
                         ids=["unrolled", "checkpointed", "implicit"])
def test_partial_adaptation_by_pattern_is_judged_right_in_every_mode(mode):
    loss_fn, _, _, theta, s, q = _problem(num_tasks=2)
    steps = 150 if isinstance(mode, type(implicit(reg=1.0))) else STEPS  # implicit: solve the inner problem

    def anil_task_loss(meta, support, query):
        return loss_fn(adapt(loss_fn, meta, support, sgd(0.2), steps=steps, mode=mode, only="2.*"), query)

    report = mo.check_meta_grad(anil_task_loss, theta, s, q, num_directions=2)
    assert report.matches_finite_differences, report


def test_hand_written_checkpointed_anil_that_drops_the_body_path_is_wrong():
    # A closure over the body is a constant to checkpointed()'s autograd.Function: the body's
    # meta-gradient then misses d(adapted head)/d(body). only= passes the body through as an input.
    loss_fn, _, _, theta, s, q = _problem(num_tasks=2)

    def closure_task_loss(meta, support, query):
        body = {k: v for k, v in meta.items() if not k.startswith("2.")}
        head = {k: v for k, v in meta.items() if k.startswith("2.")}
        head = adapt(lambda h, b: loss_fn({**body, **h}, b), head, support, sgd(LR), steps=STEPS,
                     mode=checkpointed())
        return loss_fn({**body, **head}, query)

    def only_task_loss(meta, support, query):
        return loss_fn(adapt(loss_fn, meta, support, sgd(LR), steps=STEPS, mode=checkpointed(), only="2.*"), query)

    assert "WRONG" in str(mo.check_meta_grad(closure_task_loss, theta, s, q))
    assert mo.check_meta_grad(only_task_loss, theta, s, q).matches_finite_differences


def test_meta_sgd_nested_meta_params():
    loss_fn, _, _, theta, s, q = _problem()
    meta = {"params": theta, "lrs": {k: torch.full_like(v, 0.3) for k, v in theta.items()}}

    def task_loss(meta, support, query):
        phi = adapt(loss_fn, meta["params"], support, meta_sgd(meta["lrs"]), steps=STEPS)
        return loss_fn(phi, query)

    assert mo.check_meta_grad(task_loss, meta, s, q).matches_finite_differences
    _, grads = mo.meta_value_and_grad(task_loss, meta, s, q)
    grads["lrs"]["2.bias"] = torch.full_like(grads["lrs"]["2.bias"], float("nan"))
    report = mo.check_meta_grad(task_loss, meta, s, q, meta_grad=grads)
    assert report.non_finite_parameters == ["lrs.2.bias"] and "lrs.2.bias" in str(report)


def _quadratic_tasks(num_tasks=2, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tasks, 8, dim, generator=g, dtype=torch.float64)
    y = torch.randn(num_tasks, 8, generator=g, dtype=torch.float64)
    xq = torch.randn(num_tasks, 8, dim, generator=g, dtype=torch.float64)
    yq = torch.randn(num_tasks, 8, generator=g, dtype=torch.float64)
    loss_fn = lambda p, b: 0.5 * ((b[0] @ p["w"] - b[1]) ** 2).mean()  # noqa: E731
    theta = {"w": torch.randn(dim, generator=g, dtype=torch.float64)}
    return loss_fn, theta, (x, y), (xq, yq)


def test_implicit_matches_when_the_inner_problem_is_solved():
    loss_fn, theta, s, q = _quadratic_tasks()

    def task_loss(meta, support, query):
        mode = implicit(reg=1.0, cg_steps=6)  # CG is exact after dim = 3 iterations
        return loss_fn(adapt(loss_fn, meta, support, sgd(0.3), steps=200, mode=mode), query)

    report = mo.check_meta_grad(task_loss, theta, s, q)
    assert report.matches_finite_differences and report.uses_implicit, report


def test_implicit_mismatch_is_explained_not_called_wrong():
    loss_fn, theta, s, q = _quadratic_tasks()

    def task_loss(meta, support, query):  # one inner step: far from the proximal solution
        return loss_fn(adapt(loss_fn, meta, support, sgd(0.3), steps=1, mode=implicit(reg=1.0, cg_steps=1)), query)

    report = mo.check_meta_grad(task_loss, theta, s, q)
    assert report.uses_implicit and not report.matches_finite_differences
    assert "WRONG" not in str(report)
    assert "steps=1, reg=1, cg_steps=1" in str(report) and "cg_steps" in str(report)


def test_dice_meta_gradient_gets_the_magic_box_verdict():
    mdp = make_mdp()
    rewards = torch.stack([mdp.rewards, 2.0 * mdp.rewards - 1.0])  # two tasks (N_tasks, N, H)

    def objective(p, rewards):  # DiCE over the enumerated trajectories; maximised
        lp = mdp.log_probs(p["logits"])
        return dice_objective(lp, rewards, gamma=mdp.gamma, mask=mdp.mask).mean()

    def task_loss(meta, rewards):  # one inner policy-gradient step, then the outer DiCE loss
        phi = adapt(lambda p, r: -objective(p, r), meta, rewards, sgd(0.5), steps=1)
        return -objective(phi, rewards)

    theta = {"logits": mdp.theta0}
    report = mo.check_meta_grad(task_loss, theta, rewards)
    assert not report.value_depends_on_theta and not report.matches_finite_differences
    assert report.finite and "WRONG" not in str(report)
    assert "does not depend on theta (a magic-box surrogate such as DiCE)" in str(report)
    assert "check the surrogate's expectation" in str(report)


def test_stationary_point_is_wrong_not_magic_box():
    loss_fn, theta, s, q = _quadratic_tasks(num_tasks=1)
    # theta at the minimum of a smooth meta-loss: finite differences are ~0, the value is not
    # constant, so a nonzero claimed gradient is wrong.
    x, y = s[0][0], s[1][0]
    w_star = torch.linalg.lstsq(x, y).solution
    report = mo.check_meta_grad(lambda m, s: loss_fn(m, s), {"w": w_star}, s,
                                meta_grad={"w": torch.ones(3)})
    assert report.value_depends_on_theta and "WRONG" in str(report)
    assert "stationary point" in str(report)


def _hand_written_adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam as commonly written: sqrt(v) without an eps inside the root."""

    def init(params):
        return {k: torch.zeros_like(v) for k, v in params.items()}, dict.fromkeys(params, 0.0), 0

    def step(params, grads, state, hp):
        m, v, t = state
        t += 1
        m = {k: b1 * m[k] + (1 - b1) * grads[k] for k in params}
        v = {k: b2 * v[k] + (1 - b2) * grads[k] ** 2 for k in params}
        new = {
            k: params[k] - lr * (m[k] / (1 - b1**t)) / ((v[k] / (1 - b2**t)).sqrt() + eps)
            for k in params
        }
        return new, (m, v, t)

    return InnerOptimizer(init=init, step=step, hyperparams={}, name="adam")


def test_nan_from_adam_at_a_zero_inner_gradient_names_parameters_and_cause():
    def loss_fn(p, b):
        return ((b[0] * p["w"] + p["b"] - b[1]) ** 2).mean()

    def task_loss(meta, support, query):
        return loss_fn(adapt(loss_fn, meta, support, _hand_written_adam(0.1), steps=2), query)

    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 5, generator=g, dtype=torch.float64)
    support = (torch.zeros(2, 5, dtype=torch.float64), y)  # x = 0: w's inner gradient is 0
    query = (torch.rand(2, 5, generator=g, dtype=torch.float64), y)
    theta = {"w": torch.tensor(0.5), "b": torch.tensor(0.1)}
    report = mo.check_meta_grad(task_loss, theta, support, query)
    assert not report.finite and "w" in report.non_finite_parameters
    assert "meta-loss is finite" in str(report) and "eps_root" in str(report)
    assert "'w'" in str(report)


def test_diverging_inner_loop_is_reported_as_a_non_finite_meta_loss():
    loss_fn, theta, s, q = _quadratic_tasks()
    s = (1e3 * s[0], s[1])

    def task_loss(meta, support, query):
        return loss_fn(adapt(loss_fn, meta, support, sgd(1e3), steps=40), query)

    report = mo.check_meta_grad(task_loss, theta, s, q)
    assert not report.finite and not report.matches_finite_differences
    assert "meta-loss is not finite" in str(report) and "learning rate too large" in str(report)


def test_clear_errors():
    _, task_loss, _, theta, s, q = _problem(num_tasks=1)
    with pytest.raises(ValueError, match=r"missing \['2.bias'\]"):
        mo.check_meta_grad(task_loss, theta, s, q, meta_grad={k: v for k, v in theta.items() if k != "2.bias"})
    with pytest.raises(ValueError, match="shape"):
        mo.check_meta_grad(task_loss, theta, s, q, meta_grad={k: v.flatten() for k, v in theta.items()})
    with pytest.raises(ValueError, match="num_directions"):
        mo.check_meta_grad(task_loss, theta, s, q, num_directions=0)
    with pytest.raises(ValueError, match="task arguments"):
        mo.check_meta_grad(task_loss, theta)
    with pytest.raises(TypeError, match="floating-point"):
        mo.check_meta_grad(task_loss, {"w": torch.tensor(1)}, s, q)
    weight = torch.ones(1, 1, dtype=torch.float32)  # captured float32 tensor: fails in float64
    with pytest.raises(TypeError, match="dtype of its inputs"):
        mo.check_meta_grad(lambda m, x: (x @ m["w"] @ weight).sum(), {"w": torch.ones(1, 1)}, torch.ones(2, 3, 1))
