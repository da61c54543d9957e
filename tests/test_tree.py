import pytest
import torch

from metaops import tree


def test_tree_map_pairs_dicts_by_name_not_order():
    a = {"w": torch.tensor(1.0), "b": torch.tensor(2.0)}
    b = {"b": torch.tensor(20.0), "w": torch.tensor(10.0)}
    out = tree.tree_add(a, b)
    assert list(out) == ["w", "b"]
    assert out["w"].item() == 11.0 and out["b"].item() == 22.0


def test_tree_map_structure_mismatch_names_the_keys():
    with pytest.raises(ValueError, match=r"keys \['a'\] vs keys \['b'\]"):
        tree.tree_add({"a": torch.ones(1)}, {"b": torch.ones(1)})


def test_ravel_roundtrip_and_errors():
    t = {"a": torch.randn(2, 3), "b": (torch.randn(4), torch.randn(()))}
    flat, unravel = tree.tree_ravel(t)
    assert flat.shape == (11,)
    back = unravel(flat)
    torch.testing.assert_close(back["a"], t["a"])
    torch.testing.assert_close(back["b"][0], t["b"][0])
    with pytest.raises(ValueError, match=r"shape \(11,\)"):
        unravel(torch.zeros(10))


def test_vdot_norms_and_index_stack():
    a = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([[3.0]])}
    assert tree.tree_vdot(a, a).item() == 14.0
    assert tree.tree_sq_dist(a, tree.tree_zeros_like(a)).item() == 14.0
    stacked = tree.tree_stack([a, tree.tree_scale(a, 2.0)])
    assert stacked["y"].shape == (2, 1, 1)
    torch.testing.assert_close(tree.tree_index(stacked, 1)["x"], torch.tensor([2.0, 4.0]))
    assert not tree.tree_all_finite({"x": torch.tensor([1.0, float("inf")])})


def test_stop_gradient_works_under_torch_func_grad():
    def f(w):
        return (tree.stop_gradient({"w": w})["w"] * w).sum()

    torch.testing.assert_close(torch.func.grad(f)(torch.tensor([3.0])), torch.tensor([3.0]))
