import pytest
import torch
import torch.nn.functional as F

import metaops as mo
from metaops.inner import adapt
from metaops.nn import MetaSGD, functional_call, named_params, set_grads


def test_named_params_are_the_module_tensors():
    layer = torch.nn.Linear(2, 3)
    params = named_params(layer)
    assert params["weight"] is layer.weight
    layer.bias.requires_grad_(False)
    assert sorted(named_params(layer)) == ["weight"]
    with pytest.raises(TypeError, match="nn.Module"):
        named_params({"w": torch.ones(1)})


def test_set_grads_checks_names_and_shapes():
    layer = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"unknown names \['w'\], missing names \['bias', 'weight'\]"):
        set_grads(layer, {"w": torch.ones(1)})
    with pytest.raises(ValueError, match=r"gradient for 'bias' has shape \(2,\), parameter has \(1,\)"):
        set_grads(layer, {"weight": torch.ones(1, 2), "bias": torch.ones(2)})
    set_grads(layer, {"weight": torch.ones(1, 2), "bias": torch.ones(1)})
    set_grads(layer, {"weight": torch.ones(1, 2), "bias": torch.ones(1)}, accumulate=True)
    assert layer.bias.grad.item() == 2.0


@pytest.mark.parametrize("elementwise", [True, False])
def test_meta_sgd_module_trains_with_torch_optim_and_round_trips(elementwise):
    torch.manual_seed(0)
    net = MetaSGD(torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)), 0.1,
                  elementwise=elementwise)
    assert set(net.learning_rates()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.linspace(-1, 1, 8).unsqueeze(-1)
    y = torch.sin(3 * x)

    def loss_fn(p, b):
        return F.mse_loss(torch.func.functional_call(net.model, p, (b[0],)), b[1])

    meta = net.meta_params()
    phi = adapt(loss_fn, meta["params"], (x, y), net.optimizer(meta), steps=2)
    loss_fn(phi, (x, y)).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in net.lrs.values())
    before = net.lrs["0:weight"].detach().clone()
    opt.step()
    assert not torch.equal(before, net.lrs["0:weight"])
    clone = MetaSGD(torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)), 0.5,
                    elementwise=elementwise)
    clone.load_state_dict(net.state_dict())
    torch.testing.assert_close(clone.learning_rates()["2.bias"], net.learning_rates()["2.bias"])


def test_meta_sgd_meta_value_and_grad_with_pytree_meta_params():
    net = MetaSGD(torch.nn.Linear(1, 1), 0.1)
    x = torch.randn(3, 5, 1)
    y = 2 * x

    def loss_fn(p, b):
        return F.mse_loss(torch.func.functional_call(net.model, p, (b[0],)), b[1])

    def task_loss(meta, xs, ys):
        phi = adapt(loss_fn, meta["params"], (xs, ys), mo.inner.meta_sgd(meta["lrs"]), steps=1)
        return loss_fn(phi, (xs, ys))

    meta = {k: {n: t.detach() for n, t in v.items()} for k, v in net.meta_params().items()}
    loss, grads = mo.meta_value_and_grad(task_loss, meta, x, y)
    assert set(grads) == {"params", "lrs"} and grads["lrs"]["weight"].shape == (1, 1)
    net.set_grads(grads)
    torch.testing.assert_close(net.lrs["weight"].grad, grads["lrs"]["weight"])
    torch.testing.assert_close(net.model.bias.grad, grads["params"]["bias"])
    with pytest.raises(ValueError, match="expects keys"):
        net.set_grads(grads["params"])


def test_functional_call_names_unknown_missing_and_misshaped_params():
    layer = torch.nn.Linear(2, 1)
    x = torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"Linear has no \['wieght'\] \(closest names: \{'wieght': 'weight'\}\)"):
        functional_call(layer, {"wieght": torch.ones(1, 2), "bias": torch.zeros(1)}, (x,))
    with pytest.raises(ValueError, match=r"lacks the trainable parameters \['bias'\]"):
        functional_call(layer, {"weight": torch.ones(1, 2)}, (x,))
    with pytest.raises(ValueError, match=r"params\['bias'\] has shape \(3,\), the module's has \(1,\)"):
        functional_call(layer, {"weight": torch.ones(1, 2), "bias": torch.zeros(3)}, (x,))  # would broadcast


def test_functional_call_equals_torch_and_allows_buffers_frozen_and_tied_params():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 2))
    net[2].weight = net[0].weight  # tied: giving one of the two names suffices
    net[2].bias.requires_grad_(False)  # frozen: the module's own tensor is used
    params = {k: v + 1 for k, v in named_params(net).items()}
    x = torch.randn(4, 2)
    expected = torch.func.functional_call(net, params, (x,))
    torch.testing.assert_close(functional_call(net, params, (x,)), expected)
    params["1.running_mean"] = torch.ones(2)  # buffers may be passed too
    functional_call(net, params, x)
    xs = torch.randn(3, 4, 2)
    batched = torch.func.vmap(lambda p, x: functional_call(net.eval(), p, (x,)), in_dims=(None, 0))(params, xs)
    assert batched.shape == (3, 4, 2)
