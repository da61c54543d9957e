import pytest
import torch
from torch.func import hessian, vmap

from metaops.implicit import cg, hvp
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
