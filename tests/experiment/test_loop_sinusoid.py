"""meta_train (the resumable loop), adaptation_curves and run_sinusoid against direct computations."""

import json
import math
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import metaops as mo
from metaops.experiment import (
    RunArgs,
    SinusoidArgs,
    adaptation_curves,
    load_checkpoint,
    mean_confidence_interval,
    meta_train,
    run_sinusoid,
)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _sine_data(num_tasks, seed=0, shots=5, query_shots=7):
    g = torch.Generator().manual_seed(seed)
    dist = mo.tasks.Sinusoid()
    return dist.sample_batch(dist.sample_tasks(num_tasks, generator=g), shots, generator=g, query_shots=query_shots)


# --- adaptation_curves --------------------------------------------------------------------------


def test_adaptation_curves_match_a_loop_over_tasks_and_steps():
    model = _mlp()
    params = mo.nn.named_params(model)
    support, query = _sine_data(4)

    def predict(p, x):
        return torch.func.functional_call(model, p, (x,))

    def loss_fn(p, batch):
        return F.mse_loss(predict(p, batch[0]), batch[1])

    def sgd_step(p, s):
        return mo.inner.adapt(loss_fn, p, s, mo.inner.sgd(0.05), steps=1)

    curves = adaptation_curves(loss_fn, sgd_step, params, support, query, steps=3)
    assert curves.shape == (4, 4) and not curves.requires_grad
    for i in range(4):  # task by task, with plain autograd SGD steps
        p = {name: v.detach().clone().requires_grad_() for name, v in params.items()}
        for k in range(4):
            direct = loss_fn(p, (query[0][i], query[1][i])).detach()
            torch.testing.assert_close(curves[i, k], direct, rtol=1e-5, atol=1e-6)
            grads = torch.autograd.grad(loss_fn(p, (support[0][i], support[1][i])), list(p.values()))
            p = {name: (v - 0.05 * g).detach().requires_grad_() for (name, v), g in zip(p.items(), grads)}

    x = torch.linspace(-5, 5, 11).view(-1, 1)  # shared inputs (data_dim=None): predictions per step
    preds = adaptation_curves(predict, sgd_step, params, support, x, steps=2, data_dim=None)
    assert preds.shape == (4, 3, 11, 1)
    torch.testing.assert_close(preds[:, 0], predict(params, x).detach().expand(4, 11, 1))
    one_step = sgd_step(params, (support[0][2], support[1][2]))
    torch.testing.assert_close(preds[2, 1], predict(one_step, x).detach(), rtol=1e-5, atol=1e-6)


def test_adaptation_curves_carry_any_pytree_and_zero_steps_is_the_measure():
    w = {"params": {"w": torch.tensor(0.0)}, "lrs": {"w": torch.tensor(0.25)}}  # Meta-SGD-like carry

    def loss_fn(p, batch):
        x, y = batch
        return ((p["w"] * x - y) ** 2).mean()

    def step(meta, support):
        params = mo.inner.adapt(loss_fn, meta["params"], support, mo.inner.meta_sgd(meta["lrs"]), steps=1)
        return {"params": params, "lrs": meta["lrs"]}

    x = torch.ones(2, 3)
    tasks = (x, torch.tensor([[2.0], [4.0]]) * x)
    measure = lambda meta, batch: loss_fn(meta["params"], batch)  # noqa: E731
    torch.testing.assert_close(adaptation_curves(measure, step, w, tasks, tasks, steps=2),
                               torch.tensor([[4.0, 1.0, 0.25], [16.0, 4.0, 1.0]]))
    torch.testing.assert_close(adaptation_curves(measure, step, w, tasks, tasks, steps=0),
                               torch.tensor([[4.0], [16.0]]))
    with pytest.raises(ValueError, match="steps must be >= 0"):
        adaptation_curves(measure, step, w, tasks, tasks, steps=-1)


# --- meta_train ---------------------------------------------------------------------------------


@dataclass
class ToyArgs(RunArgs):
    lr: float = 0.1


def _toy_run(args, *, on_log=None, fields=(), loss_name="loss", compiled=None, scale=1.0):
    """Fits w to noisy targets from a checkpointed generator: the result depends on the data stream."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)

    def step():
        x = torch.randn(8, 2, generator=g)
        loss = scale * F.mse_loss(model(x), x.sum(-1, keepdim=True) + 0.1 * torch.randn(8, 1, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    history, metrics = meta_train(args, step, recipe="toy", state={"model": model, "opt": opt, "generator": g},
                                  loss_name=loss_name, fields=fields, on_log=on_log, compiled=compiled)
    return model, history, metrics


def test_meta_train_resumes_exactly_and_logs_a_final_partial_window(tmp_path, capsys):
    base = ToyArgs(iterations=7, log_every=3, checkpoint_every=100, progress=False, tensorboard=False)
    calls = []
    straight, history, metrics = _toy_run(replace(base, out_dir=str(tmp_path / "a")),
                                          on_log=lambda it: calls.append(it) or {"extra": float(it)}, fields=["extra"])
    assert history["step"] == [3.0, 6.0, 7.0] and history["extra"] == [3.0, 6.0, 7.0] and calls == [3, 6, 7]
    assert metrics["final_loss"] == history["train/loss"][-1] and set(metrics) == {"final_loss", "train_seconds"}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["lr"] == 0.1

    split = replace(base, out_dir=str(tmp_path / "b"))
    on_log = lambda it: {"extra": float(it)}  # noqa: E731
    _toy_run(replace(split, iterations=4), on_log=on_log, fields=["extra"])  # stops mid-window (3 < 4 < 6)
    resumed, history_b, _ = _toy_run(split, on_log=on_log, fields=["extra"])
    assert f"resumed from {tmp_path / 'b' / 'checkpoint.pt'} at iteration 4" in capsys.readouterr().out
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert history_b == history  # the partial row at 4 was replaced by the full window's at 6
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["recipe"] == "toy" and ckpt["iteration"] == 7 and {"model", "opt", "generator"} <= set(ckpt)

    with pytest.raises(ValueError, match=r"lr: 0.1 \(checkpoint\) != 0.2 \(now\)"):
        _toy_run(replace(split, lr=0.2))
    _, history_c, _ = _toy_run(replace(split, iterations=9, checkpoint_every=2, threads=2),  # run control may change
                               on_log=on_log, fields=["extra"])
    assert history_c["step"] == [3.0, 6.0, 9.0]


def test_meta_train_reports_the_compiled_step_and_stops_on_a_non_finite_loss(tmp_path, capsys):
    args = ToyArgs(out_dir=str(tmp_path), iterations=3, log_every=1, progress=False, tensorboard=False)
    compiled = SimpleNamespace(compiled=True, compile_seconds=1.5)
    _, _, metrics = _toy_run(args, compiled=compiled)
    assert metrics["compile_seconds"] == 1.5
    assert "compile_meta_step: compiled=True, took 1.5 s" in capsys.readouterr().out
    with pytest.raises(mo.inner.NonFiniteError, match="the query-loss is inf at meta-iteration 1"):
        _toy_run(replace(args, resume=False), loss_name="query_loss", scale=math.inf)


def test_meta_train_rejects_bad_state_and_args(tmp_path):
    args = ToyArgs(out_dir=str(tmp_path), iterations=1, progress=False, tensorboard=False)
    with pytest.raises(ValueError, match="'window' is reserved"):
        meta_train(args, lambda: 0.0, recipe="toy", state={"window": torch.Generator()})
    with pytest.raises(TypeError, match=r"state\['w'\] \(Tensor\)"):
        meta_train(args, lambda: 0.0, recipe="toy", state={"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="log_every must be > 0"):
        meta_train(replace(args, log_every=0), lambda: 0.0, recipe="toy", state={})
    assert not (tmp_path / "config.json").exists()


# --- run_sinusoid -------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("eval_tasks", 1, "eval_tasks must be >= 2"), ("eval_steps", (), "eval_steps"), ("eval_steps", (0,), "eval_steps"),
    ("eval_every", 3, "multiple of log_every"), ("val_tasks", 0, "val_tasks must be > 0"),
])
def test_sinusoid_args_validate(field, value, message):
    with pytest.raises(ValueError, match=message):
        replace(SinusoidArgs(log_every=2, eval_every=2), **{field: value}).validate()


def test_run_sinusoid_reports_the_held_out_mse_of_a_direct_computation(tmp_path, capsys):
    args = SinusoidArgs(out_dir=str(tmp_path), iterations=3, log_every=1, eval_every=2, eval_tasks=5, val_tasks=3,
                        eval_shots=4, eval_query_shots=6, eval_steps=(1, 2), eval_seed=7, progress=False,
                        tensorboard=False)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g, dist = torch.Generator().manual_seed(0), mo.tasks.Sinusoid()
    lr = 0.05

    def predict(p, x):
        return torch.func.functional_call(model, p, (x,))

    def loss_fn(p, batch):
        return F.mse_loss(predict(p, batch[0]), batch[1])

    def sgd_step(p, support):
        return mo.inner.adapt(loss_fn, p, support, mo.inner.sgd(lr), steps=1)

    def step():
        (x, y), _ = dist.sample_batch(dist.sample_tasks(4, generator=g), 5, generator=g)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def direct_curves(seed, num_tasks):  # task by task, step by step, outside run_sinusoid
        eval_g = torch.Generator().manual_seed(seed)
        tasks = dist.sample_tasks(num_tasks, generator=eval_g)
        support, query = dist.sample_batch(tasks, args.eval_shots, generator=eval_g, query_shots=args.eval_query_shots)
        rows = []
        for i in range(num_tasks):
            p, row = {k: v.detach() for k, v in model.named_parameters()}, []
            for _ in range(3):
                row.append(loss_fn(p, (query[0][i], query[1][i])).item())
                p = sgd_step(p, (support[0][i], support[1][i]))
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float64), (support, query)

    validation = []  # the validation row at iteration 2 is computed with the parameters after 2 iterations
    metrics = run_sinusoid(
        args, step, recipe="toy_sine", state={"model": model, "opt": opt, "generator": g}, tasks=dist,
        meta_params=lambda: mo.nn.named_params(model), adapt_step=sgd_step, predict=predict, title="t", fits_title="f",
        on_log=lambda it: validation.append(direct_curves(8, 3)[0].mean(0)) or {} if it == 2 else {},
        task_metrics={"mse_direct": lambda p, s, q: loss_fn(p, q)},
    )
    curves, _ = direct_curves(7, 5)
    for k, name in [(0, "mse_pre"), (1, "mse_1"), (2, "mse_2")]:
        mean, half = mean_confidence_interval(curves[:, k])
        assert metrics[name] == pytest.approx(mean, rel=1e-5)
        assert metrics[f"{name}_ci95"] == pytest.approx(half, rel=1e-4)
    assert metrics["mse_direct"] == pytest.approx(metrics["mse_pre"], rel=1e-6)  # the same held-out tasks
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    assert "held-out MSE: mse_pre" in capsys.readouterr().out

    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,train/meta_loss,val/mse_pre,val/mse_1,val/mse_2"
    assert rows[1].endswith(",,,") and rows[3].endswith(",,,")  # validation only every eval_every iterations
    logged = [float(v) for v in rows[2].split(",")[2:]]
    assert logged == pytest.approx(validation[0].tolist(), rel=1e-5)
    for png in ("learning_curve.png", "fits.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
