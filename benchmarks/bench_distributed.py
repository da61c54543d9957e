"""Meta-iteration time of sinusoid MAML on 1 and 2 processes (torch.distributed, gloo, CPU).

Each cell spawns ``ranks`` processes (one thread each) that run the sinusoid MAML meta-step
as ``recipes/maml_sine.py`` does under ``torchrun``: every process draws the same task batch,
keeps its share (``metaops.distributed.shard_tasks``), computes its meta-gradient with
``metaops.meta_value_and_grad(..., process_group=group)`` (one flat ``all_reduce``) and takes
the same Adam step. Model 1-40-40-1 ReLU, K=10 support + 10 query points, one inner SGD step
(lr 0.01), second order, ``strategy="vmap"``.

Reported per cell (median over ``--iterations`` after ``--warmup``): milliseconds per
meta-iteration, the speed-up over 1 process, and the time of the all-reduce alone (the
same flat bucket, timed separately on the same processes).

Usage:
    python benchmarks/bench_distributed.py --meta-batch 25,200 --ranks 1,2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import metaops as mo


def _worker(rank: int, ranks: int, meta_batch: int, warmup: int, iterations: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=ranks)
    group = dist.group.WORLD
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tasks = mo.tasks.Sinusoid()
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss_fn(params, batch):
        x, y = batch
        return F.mse_loss(torch.func.functional_call(model, params, (x,)), y)

    def task_loss(params, support, query):
        return loss_fn(mo.inner.adapt(loss_fn, params, support, mo.inner.sgd(0.01), steps=1), query)

    def iteration() -> None:
        support, query = tasks.sample_batch(tasks.sample_tasks(meta_batch, generator=g), 10, generator=g)
        support, query = mo.distributed.shard_tasks((support, query), group)
        _, grads = mo.meta_value_and_grad(task_loss, mo.nn.named_params(model), support, query, strategy="vmap",
                                          process_group=group)
        opt.zero_grad()
        mo.nn.set_grads(model, grads)
        opt.step()

    times, comm = [], []
    bucket = torch.zeros(sum(p.numel() for p in model.parameters()) + 1 + ranks)  # grads, loss, counts
    for _ in range(warmup + iterations):
        dist.barrier()
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(bucket)
        comm.append(time.perf_counter() - start)
    if rank == 0:
        torch.save({"step": statistics.median(times[warmup:]), "comm": statistics.median(comm[warmup:]),
                    "params": bucket.numel() - 1 - ranks}, out)
    dist.destroy_process_group()


def measure(ranks: int, meta_batch: int, warmup: int, iterations: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        mp.spawn(_worker, args=(ranks, meta_batch, warmup, iterations, os.path.join(tmp, "store"), out),
                 nprocs=ranks, join=True)
        return torch.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meta-batch", default="25,200", help="comma-separated meta-batch sizes")
    parser.add_argument("--ranks", default="1,2", help="comma-separated process counts")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    print("| meta-batch | processes | ms / meta-iteration | speed-up | all-reduce alone (ms) | bytes reduced |")
    print("|---:|---:|---:|---:|---:|---:|")
    for meta_batch in map(int, args.meta_batch.split(",")):
        base = None
        for ranks in map(int, args.ranks.split(",")):
            result = measure(ranks, meta_batch, args.warmup, args.iterations)
            base = base or result["step"]
            print(f"| {meta_batch} | {ranks} | {1e3 * result['step']:.2f} | {base / result['step']:.2f}x | "
                  f"{1e3 * result['comm']:.3f} | {4 * (result['params'] + 1 + ranks)} |", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
