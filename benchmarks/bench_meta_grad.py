"""Meta-gradient benchmark (issue 2): time per meta-iteration and peak memory, one process each.

Workloads (synthetic data, fixed seed, so every column sees the same numbers):

- W1: sinusoid MAML, MLP 1-40-40-1, 25 tasks, K=10 support + 10 query, inner lr 0.01.
- W2: Omniglot-shaped conv4 (4 x [conv 3x3, 64 ch, norm, ReLU, max-pool 2]), 1x28x28, 5-way
  1-shot, 5 query images per class, 32 tasks, inner lr 0.4, 1 inner step; norm is batch norm
  (``--norm bn``, batch statistics) or none.

A meta-iteration is the inner loop, the outer backward pass and an Adam step on the
meta-parameters. Columns: metaops (strategies auto/vmap/chunked/loop; compiled: the whole
vmapped step with ``compile_meta_step``, or one task's/chunk's meta-gradient with
``compile_meta_value_and_grad``, where ``metaops-compiled`` is its ``"auto"``), a
per-task autograd loop (how learn2learn and higher work), higher, torchopt's OOP MetaSGD,
learn2learn (skipped when not importable) and a plain SGD step on the same data (the floor).

Usage:
    python benchmarks/bench_meta_grad.py --suite w1          # W1 table (1 and 5 steps, 2nd/1st order)
    python benchmarks/bench_meta_grad.py --suite w2          # W2 table (bn and none)
    python benchmarks/bench_meta_grad.py --suite w1 --compile  # add compiled metaops columns
    python benchmarks/bench_meta_grad.py --one --workload w1 --impl metaops-vmap  # one process

Each configuration runs in its own process (``--one``); the driver compares every column's
meta-gradient with the per-task autograd loop's (max |difference| / max |reference|) and
prints a markdown table: median ms per meta-iteration over ``--repeats`` runs, and peak extra
resident memory (VmHWM during the timed runs minus VmRSS before the first call, in MB; with
``--device cuda``, peak GPU memory allocated during the timed runs above what was allocated
before them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import metaops as mo
from metaops._batching import _compiled as compiled_meta_value_and_grad  # the cache of compile=True


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset VmHWM to the current RSS
        f.write("5")


# ----------------------------------------------------------------------------- workloads
def make_workload(name: str, norm: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "w1":
        model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
        amp = torch.rand(25, 1, 1, generator=g) * 4.9 + 0.1
        phase = torch.rand(25, 1, 1, generator=g) * torch.pi
        xs, xq = (torch.rand(2, 25, 10, 1, generator=g) * 10 - 5).unbind(0)
        support, query = (xs, amp * torch.sin(xs - phase)), (xq, amp * torch.sin(xq - phase))

        def loss_fn(params, batch):
            x, y = batch
            return F.mse_loss(torch.func.functional_call(model, params, (x,)), y)

        return model, loss_fn, support, query, 0.01
    layers, cin = [], 1
    for _ in range(4):
        layers.append(nn.Conv2d(cin, 64, 3, padding=1))
        if norm == "bn":
            layers.append(nn.BatchNorm2d(64, track_running_stats=False))
        elif norm == "gn":
            layers.append(nn.GroupNorm(4, 64))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        cin = 64
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, 5))
    xs = torch.randn(32, 5, 1, 28, 28, generator=g)
    xq = torch.randn(32, 25, 1, 28, 28, generator=g)
    ys = torch.arange(5).expand(32, 5).contiguous()
    yq = torch.arange(5).repeat(5).expand(32, 25).contiguous()

    def loss_fn(params, batch):
        x, y = batch
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    return model, loss_fn, (xs, ys), (xq, yq), 0.4


# ----------------------------------------------------------------------------- columns
def _index(batch, i):
    return tuple(x[i] for x in batch)


def make_step(impl: str, model, loss_fn, support, query, lr: float, steps: int, second_order: bool):
    """Returns ``meta_grad()``, which leaves the meta-gradient in ``model``'s ``.grad``."""
    n = support[0].shape[0]
    params = dict(model.named_parameters())

    if impl.startswith("metaops"):
        # metaops[-STRATEGY][-compiled]: meta_value_and_grad(..., compile=True), which compiles
        # the whole vmapped step ("-vmap-compiled") or one task's / one chunk's meta-gradient
        # ("-loop-/-chunked-compiled"; "metaops-compiled" is "auto"). The compiled object comes
        # from meta_value_and_grad's cache so that its compile time and fallback can be printed.
        compiled = impl.endswith("-compiled")
        name = impl.removesuffix("-compiled")
        strategy = name.split("-")[1] if "-" in name else "auto"
        kwargs = {"chunk_size": 8} if strategy == "chunked" else {}

        def task_loss(theta, s, q):
            mode = mo.inner.unrolled() if second_order else mo.inner.first_order()
            return loss_fn(mo.inner.adapt(loss_fn, theta, s, mo.inner.sgd(lr), steps=steps, mode=mode), q)

        def meta_step(theta, s, q):
            return mo.meta_value_and_grad(task_loss, theta, s, q, strategy=strategy, **kwargs)

        fn = compiled_meta_value_and_grad(task_loss, strategy, kwargs.get("chunk_size")) if compiled else meta_step

        def meta_grad():
            _, grads = fn(params, support, query)
            mo.nn.set_grads(model, grads)

        meta_grad.compiled_step = fn if compiled else None
        return meta_grad

    if impl == "autograd-loop":

        def meta_grad():
            for i in range(n):
                fast = params
                for _ in range(steps):
                    inner = loss_fn(fast, _index(support, i))
                    grads = torch.autograd.grad(inner, list(fast.values()), create_graph=second_order)
                    fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
                (loss_fn(fast, _index(query, i)) / n).backward()

        return meta_grad

    if impl == "higher":
        import higher

        inner_opt = torch.optim.SGD(model.parameters(), lr=lr)

        def meta_grad():
            for i in range(n):
                with higher.innerloop_ctx(
                    model, inner_opt, copy_initial_weights=False, track_higher_grads=second_order
                ) as (fmodel, diffopt):
                    xs, ys = _index(support, i)
                    for _ in range(steps):
                        diffopt.step(_plain_loss(fmodel(xs), ys))
                    xq, yq = _index(query, i)
                    query_loss = _plain_loss(fmodel(xq), yq) / n
                    if second_order:
                        query_loss.backward()
                    else:  # FOMAML with higher: the query gradient at the adapted weights
                        grads = torch.autograd.grad(query_loss, list(fmodel.parameters()))
                        for p, g in zip(model.parameters(), grads):
                            p.grad = g if p.grad is None else p.grad + g

        return meta_grad

    if impl == "torchopt":
        import torchopt

        if not second_order:
            raise NotImplementedError("torchopt's OOP MetaSGD has no first-order switch")

        def meta_grad():
            state = torchopt.extract_state_dict(model)
            for i in range(n):
                inner_opt = torchopt.MetaSGD(model, lr=lr)
                xs, ys = _index(support, i)
                for _ in range(steps):
                    inner_opt.step(_plain_loss(model(xs), ys))
                xq, yq = _index(query, i)
                (_plain_loss(model(xq), yq) / n).backward()
                torchopt.recover_state_dict(model, state)

        return meta_grad

    if impl == "learn2learn":
        import learn2learn as l2l  # noqa: F401 - ImportError -> the column is skipped

        maml = l2l.algorithms.MAML(model, lr=lr, first_order=not second_order)

        def meta_grad():
            for i in range(n):
                learner = maml.clone()
                xs, ys = _index(support, i)
                for _ in range(steps):
                    learner.adapt(_plain_loss(learner(xs), ys))
                xq, yq = _index(query, i)
                (_plain_loss(learner(xq), yq) / n).backward()

        return meta_grad

    if impl == "sgd":
        x_all = torch.cat([support[0].flatten(0, 1), query[0].flatten(0, 1)])
        y_all = torch.cat([support[1].flatten(0, 1), query[1].flatten(0, 1)])

        def meta_grad():
            _plain_loss(model(x_all), y_all).backward()

        return meta_grad
    raise ValueError(f"unknown impl {impl!r}")


def _plain_loss(out, y):
    return F.mse_loss(out, y) if y.is_floating_point() else F.cross_entropy(out, y)


# ----------------------------------------------------------------------------- one process
def run_one(a) -> dict:
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    model, loss_fn, support, query, lr = make_workload(a.workload, a.norm)
    model.to(device)
    support, query = (tuple(x.to(device) for x in batch) for batch in (support, query))
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    meta_grad = make_step(a.impl, model, loss_fn, support, query, lr, a.steps, a.order == "second")
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rss0 = _status_kb("VmRSS")

    # Meta-gradient at the initial parameters (for the agreement check), then warm-up.
    compile_s = None
    start = time.perf_counter()
    meta_grad()
    sync()
    first_s = time.perf_counter() - start
    reference = {k: p.grad.detach().cpu().clone() for k, p in model.named_parameters()}
    compiled = getattr(meta_grad, "compiled_step", None)
    for _ in range(a.warmup):
        model.zero_grad(set_to_none=True)
        meta_grad()
    if compiled is not None:
        compile_s = compiled.compile_seconds
    adam.step()

    _reset_peak()
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(a.repeats):
        start = time.perf_counter()
        adam.zero_grad(set_to_none=True)
        meta_grad()
        adam.step()
        sync()
        times.append(time.perf_counter() - start)
    peak_mb = (_status_kb("VmHWM") - rss0) / 1024
    if cuda:  # GPU memory: peak allocated during the timed runs above what was allocated before
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    result = {
        "impl": a.impl,
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "peak_extra_mb": peak_mb,
        "first_call_s": first_s,
        "compile_s": compile_s,
        "compiled": None if compiled is None else compiled.compiled,
        "fallback_reason": None if compiled is None else compiled.fallback_reason,
    }
    if a.grads_out:
        torch.save(reference, a.grads_out)
    return result


# ----------------------------------------------------------------------------- driver
IMPLS = ["metaops", "metaops-vmap", "metaops-chunked", "metaops-loop", "autograd-loop",
         "higher", "torchopt", "learn2learn", "sgd"]


def _configs(suite: str):
    if suite == "w1":
        for steps, order in ((1, "second"), (5, "second"), (1, "first")):
            yield {"workload": "w1", "norm": "none", "steps": steps, "order": order}
    else:
        for norm in ("none", "bn"):
            yield {"workload": "w2", "norm": norm, "steps": 1, "order": "second"}


def drive(a) -> None:
    impls = list(IMPLS)
    if a.compile:
        impls[1:1] = ["metaops-compiled", "metaops-vmap-compiled", "metaops-loop-compiled"]
    if a.impls:
        impls = a.impls.split(",")
    repeats = a.repeats or (30 if a.suite == "w1" else 5)
    load = os.getloadavg()
    print(f"Run: {time.strftime('%Y-%m-%d %H:%M')} torch {torch.__version__}, device {a.device}, threads {a.threads}, "
          f"load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} at start, {repeats} repeats", flush=True)
    for config in _configs(a.suite):
        print(f"\n## {config}", flush=True)
        print("| column | median ms | min ms | peak extra MB | vs autograd-loop | grad rel. diff | note |")
        print("|---|---|---|---|---|---|---|", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            rows, grads = [], {}
            order = ["autograd-loop"] + [i for i in impls if i != "autograd-loop"]
            for impl in order:
                out = Path(tmp) / f"{impl}.pt"
                cmd = [sys.executable, __file__, "--one", "--impl", impl, "--repeats", str(repeats),
                       "--threads", str(a.threads), "--device", a.device, "--grads-out", str(out)]
                cmd += [f"--{k}={v}" for k, v in config.items()]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                except subprocess.TimeoutExpired:
                    rows.append((impl, None, f"timed out after {a.timeout} s"))
                    continue
                if proc.returncode != 0:
                    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    rows.append((impl, None, f"skipped: {last[:90]}"))
                    continue
                rows.append((impl, json.loads(proc.stdout.strip().splitlines()[-1]), ""))
                if impl != "sgd":
                    grads[impl] = torch.load(out)
            ref = grads.get("autograd-loop")
            base = next((r["median_ms"] for i, r, _ in rows if i == "autograd-loop" and r), None)
            for impl, r, note in rows:
                if r is None:
                    print(f"| {impl} | | | | | | {note} |", flush=True)
                    continue
                diff = ""
                if ref is not None and impl in grads:
                    scale = max(v.abs().max().item() for v in ref.values())
                    diff = f"{max((grads[impl][k] - ref[k]).abs().max().item() for k in ref) / scale:.1e}"
                if r["compile_s"] is not None:
                    note = f"compile {r['compile_s']:.1f} s" + (
                        "" if r["compiled"] else f" (fell back to eager: {(r.get('fallback_reason') or '?')[:150]})")
                speed = f"{base / r['median_ms']:.2f}x" if base else ""
                print(f"| {impl} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | {r['peak_extra_mb']:.0f} | "
                      f"{speed} | {diff} | {note} |", flush=True)
    load = os.getloadavg()
    print(f"\nRun load at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=["w1", "w2"], default="w1")
    p.add_argument("--compile", action="store_true", help="add the compiled metaops column")
    p.add_argument("--impls", default="", help="comma-separated subset of columns")
    p.add_argument("--one", action="store_true", help="run one configuration in this process")
    p.add_argument("--impl", default="metaops")
    p.add_argument("--workload", choices=["w1", "w2"], default="w1")
    p.add_argument("--norm", choices=["none", "bn", "gn"], default="none")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--order", choices=["second", "first"], default="second")
    p.add_argument("--repeats", type=int, default=0)
    p.add_argument("--warmup", type=int, default=-1, help="default: 3 on W1, 1 on W2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="e.g. cuda: time with synchronisation, GPU peak memory")
    p.add_argument("--timeout", type=float, default=900, help="seconds per process")
    p.add_argument("--grads-out", default="")
    a = p.parse_args()
    if a.one:
        a.repeats = a.repeats or (30 if a.workload == "w1" else 5)
        a.warmup = a.warmup if a.warmup >= 0 else (3 if a.workload == "w1" else 1)
        print(json.dumps(run_one(a)))
    else:
        drive(a)


if __name__ == "__main__":
    main()
