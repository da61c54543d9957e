"""Runs the code of docs/tutorials/rl_meta_gradients.md (tiny settings) so it cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "tutorials" / "rl_meta_gradients.md"
TINY = {"META_BATCH": 2, "EPISODES": 2, "HORIZON": 12, "ITERATIONS": 2}


def _tutorial_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    assert len(blocks) >= 3, "the tutorial lost its code blocks"
    code = "\n".join(blocks)
    for name, value in TINY.items():
        code, count = re.subn(rf"^{name} = \d+", f"{name} = {value}", code, flags=re.M)
        assert count == 1, f"setting {name} not found in the tutorial"
    return code


def test_tutorial_runs_and_produces_a_meta_gradient(capsys):
    pytest.importorskip("gymnasium")
    namespace: dict = {"__name__": "tutorial"}
    exec(compile(_tutorial_code(), str(TUTORIAL), "exec"), namespace)
    policy = namespace["policy"]
    assert torch.isfinite(namespace["meta_loss"])
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert capsys.readouterr().out.count("post-update return") == TINY["ITERATIONS"]


def test_tutorial_meta_gradient_contains_the_inner_hessian_term():
    """The meta-gradient flows through the inner step: it differs from a first-order one."""
    pytest.importorskip("gymnasium")
    namespace: dict = {"__name__": "tutorial"}
    code = _tutorial_code().split("meta_optimizer = torch.optim.Adam")[0]
    exec(compile(code, str(TUTORIAL), "exec"), namespace)
    policy, objective = namespace["policy"], namespace["objective"]
    rollout, fitted_values = namespace["rollout"], namespace["fitted_values"]
    params = {k: v.detach() for k, v in policy.named_parameters()}
    pre = rollout(params, 0.5, seed=0)
    pre_values = fitted_values(pre)
    adapted0 = {k: params[k] + 0.1 * g for k, g in torch.func.grad(objective)(params, pre, pre_values).items()}
    post = rollout(adapted0, 0.5, seed=1)
    post_values = fitted_values(post)

    def meta(p, first_order):
        g = torch.func.grad(objective)(p, pre, pre_values)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        return objective({k: p[k] + 0.1 * g[k] for k in p}, post, post_values)

    full = torch.func.grad(lambda p: meta(p, False))(params)
    first = torch.func.grad(lambda p: meta(p, True))(params)
    diff = max(float((full[k] - first[k]).abs().max()) for k in params)
    assert diff > 1e-6
