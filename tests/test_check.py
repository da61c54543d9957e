"""check_meta_grad tells correct, first-order and wrong meta-gradients apart."""

import torch

import metaops as mo
from metaops.inner import adapt, first_order, sgd
from tests._helpers import index_task, toy_regression


def _problem():
    _, loss_fn, theta, support, query = toy_regression(num_tasks=1, dtype=torch.float32)
    return loss_fn, theta, index_task(support, 0), index_task(query, 0)


def test_correct_second_order_gradient():
    loss_fn, theta, s, q = _problem()
    report = mo.check_meta_grad(loss_fn, theta, s, q, sgd(0.5), steps=2)
    assert report.matches_finite_differences and report.second_order_present
    assert "matches finite differences" in str(report)


def test_forgotten_create_graph_is_diagnosed():
    loss_fn, theta, s, q = _problem()
    # The classic bug: adapt a detached copy (as if create_graph=False), then differentiate.
    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    phi = dict(leaves)
    for _ in range(2):
        grads = torch.autograd.grad(loss_fn(phi, s), list(phi.values()))  # no create_graph
        phi = {k: v - 0.5 * g for (k, v), g in zip(phi.items(), grads)}
    loss_fn(phi, q).backward()
    buggy = {k: v.grad for k, v in leaves.items()}
    report = mo.check_meta_grad(loss_fn, theta, s, q, sgd(0.5), steps=2, meta_grad=buggy)
    assert not report.matches_finite_differences
    assert not report.second_order_present
    assert "second-order terms are missing" in report.verdict


def test_first_order_optimizer_is_reported_as_such_and_garbage_as_wrong():
    loss_fn, theta, s, q = _problem()
    fo = torch.func.grad(lambda th: loss_fn(adapt(loss_fn, th, s, sgd(0.5), steps=2, mode=first_order()), q))(theta)
    report = mo.check_meta_grad(loss_fn, theta, s, q, sgd(0.5), steps=2, meta_grad=fo)
    assert "FIRST-ORDER" in report.verdict
    garbage = {k: torch.randn_like(v) for k, v in theta.items()}
    report = mo.check_meta_grad(loss_fn, theta, s, q, sgd(0.5), steps=2, meta_grad=garbage)
    assert "WRONG" in report.verdict and not report.matches_finite_differences
