"""The four memory/accuracy modes of ``metaops.inner.adapt``, side by side: time and peak memory.

Modes of ``adapt(..., sgd(lr), mode=...)``: ``unrolled()``, ``checkpointed()``, ``first_order()``, ``implicit(
reg=1.0, cg_steps=5)``, each at several inner-step counts, one process per cell. Workloads:

- ``w1``: sinusoid MLP 1-40-40-1, 25 tasks, K=10+10, lr 0.01, ``strategy="vmap"``.
- ``conv``: mid-size conv (4 x [conv 3x3, 32 ch, ReLU, max-pool 2]), 1x28x28, 5-way 1-shot,
  15 query images per class, 4 tasks, lr 0.1, ``strategy="loop"``.

Time is the median of ``--repeats`` meta-gradients (``meta_value_and_grad``); memory is VmHWM
during the timed runs minus VmRSS before the first call (MB). The gradient error column is
max |g - g_unroll| / max |g_unroll| at the same step count (implicit and first-order
gradients are different estimators, so their error is expected).

``implicit_value_and_grad`` is the same iMAML meta-gradient as ``implicit`` without a custom
``autograd.Function``; ``--compile`` times every mode compiled (the Function-based
``checkpointed`` and ``implicit`` fall back to eager, marked in the table).

Usage:
    python benchmarks/bench_modes.py --workload w1 --steps 1,5,20 --compile
    python benchmarks/bench_modes.py --workload conv --steps 1,5,20
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

sys.path.insert(0, str(Path(__file__).parent))
from bench_meta_grad import _reset_peak, _status_kb, make_workload  # noqa: E402

MODES = {
    "unroll": mo.inner.unrolled(),
    "checkpointed": mo.inner.checkpointed(),
    "first_order": mo.inner.first_order(),
    "implicit": mo.inner.implicit(reg=1.0, cg_steps=5),
    # the same iMAML meta-gradient, written without a custom autograd.Function (compiles)
    "implicit_value_and_grad": None,
}


def _conv_workload():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layers, cin = [], 1
    for _ in range(4):
        layers += [nn.Conv2d(cin, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        cin = 32
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(32, 5))
    xs, xq = torch.randn(4, 5, 1, 28, 28, generator=g), torch.randn(4, 75, 1, 28, 28, generator=g)
    ys, yq = torch.arange(5).expand(4, 5).contiguous(), torch.arange(5).repeat(15).expand(4, 75).contiguous()

    def loss_fn(params, batch):
        return F.cross_entropy(torch.func.functional_call(model, params, (batch[0],)), batch[1])

    return model, loss_fn, (xs, ys), (xq, yq), 0.1


def run_one(a) -> dict:
    torch.set_num_threads(a.threads)
    if a.workload == "w1":
        model, loss_fn, support, query, lr = make_workload("w1", "none")
        strategy = "vmap"
    else:
        model, loss_fn, support, query, lr = _conv_workload()
        strategy = "loop"
    params = {k: v.detach() for k, v in model.named_parameters()}

    def task_loss(theta, s, q):
        return loss_fn(mo.inner.adapt(loss_fn, theta, s, mo.inner.sgd(lr), steps=a.steps, mode=MODES[a.mode]), q)

    def explicit_task(theta, s, q):
        return mo.inner.implicit_value_and_grad(lambda phi: loss_fn(phi, q), loss_fn, theta, s, mo.inner.sgd(lr),
                                                reg=1.0, steps=a.steps, cg_steps=5)

    def explicit_step(theta, s, q):
        losses, grads = mo.map_tasks(explicit_task, in_dims=(None, 0, 0), strategy=strategy)(theta, s, q)
        return losses.mean(), mo.tree.tree_map(lambda g: g.mean(0), grads)

    if a.mode == "implicit_value_and_grad":
        step = mo.compile_meta_step(explicit_step) if a.compile else explicit_step
    elif a.compile:
        step = compiled_meta_value_and_grad(task_loss, strategy, None)  # meta_value_and_grad(compile=True)
    else:
        step = lambda theta, s, q: mo.meta_value_and_grad(task_loss, theta, s, q, strategy=strategy)  # noqa: E731

    rss0 = _status_kb("VmRSS")
    _, grads = step(params, support, query)
    if a.compile:
        step(params, support, query)  # the compiling call
    _reset_peak()
    times = []
    for _ in range(a.repeats):
        start = time.perf_counter()
        step(params, support, query)
        times.append(time.perf_counter() - start)
    torch.save(grads, a.grads_out)
    result = {"median_ms": 1e3 * statistics.median(times), "peak_extra_mb": (_status_kb("VmHWM") - rss0) / 1024}
    if a.compile:
        result |= {"compile_s": step.compile_seconds, "compiled": step.compiled}
    return result


def drive(a) -> None:
    load = os.getloadavg()
    print(f"Run: {time.strftime('%Y-%m-%d %H:%M')} torch {torch.__version__}, workload {a.workload}, threads "
          f"{a.threads}, load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} at start, {a.repeats} repeats\n")
    if a.compile:
        print("| mode | inner steps | median ms | peak extra MB | grad rel. diff vs unroll | compile |")
        print("|---|---|---|---|---|---|", flush=True)
    else:
        print("| mode | inner steps | median ms | peak extra MB | grad rel. diff vs unroll |")
        print("|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for steps in [int(s) for s in a.steps.split(",")]:
            ref = None
            for mode in MODES:
                out = Path(tmp) / f"{mode}-{steps}.pt"
                cmd = [sys.executable, __file__, "--one", "--workload", a.workload, "--mode", mode,
                       "--steps", str(steps), "--repeats", str(a.repeats), "--threads", str(a.threads),
                       "--grads-out", str(out)] + (["--compile"] if a.compile else [])
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                if proc.returncode != 0:
                    print(f"| {mode} | {steps} | failed: {proc.stderr.strip().splitlines()[-1][:80]} | | |")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                grads = torch.load(out)
                ref = grads if mode == "unroll" else ref
                scale = max(v.abs().max().item() for v in ref.values())
                diff = max((grads[k] - ref[k]).abs().max().item() for k in ref) / scale
                note = ""
                if a.compile:
                    compile_s = r["compile_s"] if r["compile_s"] is not None else float("nan")
                    note = f" | {compile_s:.1f} s" + ("" if r["compiled"] else " (eager fallback)")
                print(f"| {mode} | {steps} | {r['median_ms']:.1f} | {r['peak_extra_mb']:.0f} | {diff:.1e}{note} |",
                      flush=True)
    load = os.getloadavg()
    print(f"\nRun load at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=["w1", "conv"], default="w1")
    p.add_argument("--steps", default="1,5,20")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--compile", action="store_true", help="compiled meta-gradients (meta_value_and_grad(compile=True); "
                   "implicit_value_and_grad with compile_meta_step)")
    p.add_argument("--one", action="store_true")
    p.add_argument("--mode", choices=list(MODES), default="unroll")
    p.add_argument("--grads-out", default="")
    a = p.parse_args()
    if a.one:
        a.steps = int(a.steps)
        print(json.dumps(run_one(a)))
    else:
        drive(a)


if __name__ == "__main__":
    main()
