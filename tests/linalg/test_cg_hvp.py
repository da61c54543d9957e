import pytest
import torch
from torch.func import hessian, vmap

from metaops.linalg import cg, hvp
from metaops.tree import tree_ravel


def _spd(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=dtype)
    return m @ m.T + n * torch.eye(n, dtype=dtype)


def test_cg_matches_dense_solve_on_a_pytree():
    A = _spd(7, 0)
    b = torch.randn(7, dtype=torch.float64)
    # split the vector into a two-leaf pytree and solve with the pytree matvec
    to_tree = lambda v: {"a": v[:3], "b": v[3:].reshape(2, 2)}  # noqa: E731
    to_vec = lambda t: torch.cat([t["a"], t["b"].reshape(-1)])  # noqa: E731
    x = cg(lambda t: to_tree(A @ to_vec(t)), to_tree(b), steps=7)
    torch.testing.assert_close(to_vec(x), torch.linalg.solve(A, b))


def test_cg_extra_iterations_are_harmless_and_vmap_safe():
    A = torch.stack([_spd(4, s) for s in range(3)])
    b = torch.randn(3, 4, dtype=torch.float64)
    x = vmap(lambda a, bb: cg(lambda v: a @ v, bb, steps=12))(A, b)
    torch.testing.assert_close(x, torch.linalg.solve(A, b))


def test_cg_rejects_bad_steps():
    with pytest.raises(ValueError, match="steps >= 1"):
        cg(lambda v: v, torch.ones(2), steps=0)


def test_hvp_matches_exact_hessian():
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    params = {"w": rand(3, 2), "b": rand(2)}
    x = rand(5, 3)

    def f(p):
        return torch.tanh(x @ p["w"] + p["b"]).pow(3).sum()

    v = {"w": rand(3, 2), "b": rand(2)}
    flat, unravel = tree_ravel(params)
    flat_v, _ = tree_ravel(v)
    H = hessian(lambda z: f(unravel(z)))(flat)
    expected = unravel(H @ flat_v)
    out = hvp(f, params, v)
    for k in params:
        torch.testing.assert_close(out[k], expected[k])


def test_cg_stops_at_negative_curvature_and_stays_bounded():
    # A = diag(2, -1): from b = (1, 1) the first direction p = b has p^T A p = 1 > 0, the second
    # step's direction has negative curvature. Truncated CG keeps the first step's x.
    A = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0], dtype=torch.float64)
    x = cg(lambda v: A @ v, b, steps=5)
    torch.testing.assert_close(x, b * (b @ b) / (b @ A @ b))  # the first CG step: x = alpha b, alpha = 2
    # the plain iteration (no truncation) would divide by the negative curvature and leave
    # the Krylov space's well-posed part; here every direction after the first is ignored
    assert torch.isfinite(x).all()
    # per-task: one SPD system solved exactly, one indefinite system truncated, under vmap
    As = torch.stack([_spd(2, 0), A])
    xs = vmap(lambda a, bb: cg(lambda v: a @ v, bb, steps=5))(As, torch.stack([b, b]))
    torch.testing.assert_close(xs[0], torch.linalg.solve(As[0], b))
    torch.testing.assert_close(xs[1], x)


def test_cg_of_a_zero_right_hand_side_is_zero():
    x = cg(lambda v: _spd(3, 1) @ v, torch.zeros(3, dtype=torch.float64), steps=3)
    assert torch.equal(x, torch.zeros(3, dtype=torch.float64))
