# Docs: docs/recipes/fewshot.md (site page: recipes/fewshot/)
"""N-way K-shot image classification: MAML, FOMAML, Reptile, Meta-SGD, ANIL and a non-meta baseline.

One conv4 network (four blocks of 3x3 conv, batch norm, ReLU, 2x2 max-pool; a linear ``head``)
meta-trained on tasks of the training classes and evaluated on tasks of unseen test classes:
accuracy on the query images after adapting on the support images, with a 95% interval over
``eval_tasks`` tasks. Datasets, all offline: ``digits`` (scikit-learn's 8x8 handwritten digits,
``pip install "metaops[fewshot]"``), ``glyphs`` (characters rendered from matplotlib's fonts) and
``folder`` (any class-per-folder image tree, e.g. Omniglot: ``--dataset folder --data-dir ...``).

Run ``python -m recipes.fewshot --help`` for the options.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn

import metaops as mo
from metaops.experiment import (
    RunArgs,
    format_summary,
    meta_train,
    plot_learning_curve,
    save_json,
    summarize_tasks,
)

Algorithm = Literal["maml", "fomaml", "reptile", "metasgd", "anil", "baseline"]


@dataclass
class Args(RunArgs):  # + run control: --out-dir, --iterations, --seed, --log-every, --no-resume, ...
    out_dir: str = "runs/fewshot"
    iterations: int = 1_000
    """meta-iterations (for the baseline: pre-training minibatches)"""
    log_every: int = 50
    checkpoint_every: int = 250
    algorithm: Algorithm = "maml"
    """maml (second order), fomaml, reptile, metasgd (learned step sizes), anil (adapt the head only),
    or baseline (pre-train a classifier on the training classes, fine-tune a new head per test task)"""
    dataset: Literal["digits", "glyphs", "folder"] = "digits"
    """digits (sklearn, 10 classes, 8x8), glyphs (66 characters x 16 fonts, rendered), or folder (--data-dir)"""
    data_dir: str | None = None
    """folder: the class-per-folder image tree (root/<class>/<image> or root/<group>/<class>/<image>);
    glyphs: the cache folder (default $METAOPS_CACHE or ~/.cache/metaops)"""
    image_size: int = 28
    """folder: resize every image to this size; glyphs: rendered size (digits are always 8x8)"""
    channels: int = 1
    """folder: 1 (grayscale) or 3 (RGB)"""
    split: tuple[int, int, int] | None = None
    """classes for train, validation, test; default digits 5 0 5, glyphs 40 10 16, folder 60%/20%/rest"""
    split_seed: int = 0
    """seed of the class split"""
    ways: int = 5
    """classes per task (N)"""
    shots: int = 1
    """support images per class (K)"""
    query_shots: int = 15
    """query images per class"""
    meta_batch: int = 16
    """tasks per meta-update"""
    inner_steps: int = 1
    """inner SGD steps, in training and evaluation (reptile needs >= 2)"""
    inner_lr: float = 0.4
    """inner SGD step size (Meta-SGD: the initial learned step size)"""
    meta_lr: float = 1e-3
    """Adam step size of the meta-update (and of the baseline's pre-training)"""
    hidden: int = 64
    """channels of each conv block"""
    baseline_batch: int = 256
    """baseline: pre-training images per minibatch"""
    finetune_steps: int = 100
    """baseline: SGD steps on a new zero-initialised head per test task"""
    finetune_lr: float = 0.1
    """baseline: step size of the head fine-tuning"""
    eval_tasks: int = 600
    """test-class tasks of the final evaluation"""
    eval_seed: int = 1_000
    """seed of the test tasks (the validation tasks use eval_seed + 1)"""
    val_tasks: int = 100
    """validation-class tasks for the accuracy logged every eval_every iterations (if the split has any)"""
    eval_every: int = 250
    """iterations between validation evaluations (a multiple of log_every)"""
    eval_init: bool = False
    """also evaluate the untrained initialisation (same seed) on the same test tasks: accuracy_init and
    the paired gain accuracy_gain"""


def conv4(in_channels: int, image_size: int, ways: int, hidden: int) -> nn.Module:
    """Four conv3x3-BN-ReLU-maxpool blocks and a linear ``head`` (pooling rounds up: 8x8 -> 1x1)."""
    blocks = [
        nn.Sequential(nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden),
                      nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True))
        for i in range(4)
    ]
    body = nn.Sequential(*blocks, nn.Flatten())
    features = body(torch.zeros(2, in_channels, image_size, image_size)).shape[1]
    return nn.Sequential(OrderedDict(body=body, head=nn.Linear(features, ways)))  # names body.*, head.*


def load_dataset(args: Args) -> tuple[mo.tasks.LabelledImages, tuple[list[int], list[int], list[int]]]:
    if args.dataset == "digits":
        data, default = mo.tasks.load_digits(), (5, 0, 5)
    elif args.dataset == "glyphs":
        data, default = mo.tasks.load_glyphs(args.data_dir, image_size=args.image_size), (40, 10, 16)
    elif args.dataset == "folder":
        if args.data_dir is None:
            raise ValueError("--dataset folder needs --data-dir (the class-per-folder image tree)")
        data = mo.tasks.load_image_folder(args.data_dir, image_size=args.image_size, channels=args.channels)
        n = len(data.class_names)
        default = (round(0.6 * n), round(0.2 * n), n - round(0.6 * n) - round(0.2 * n))
    else:
        raise ValueError(f"unknown dataset {args.dataset!r}")
    sizes = args.split or default
    return data, mo.tasks.split_classes(len(data.class_names), sizes, seed=args.split_seed)


def main(args: Args) -> dict[str, float]:
    args.validate("ways", "shots", "query_shots", "meta_batch", "inner_steps", "inner_lr", "meta_lr", "hidden",
                  "baseline_batch", "finetune_steps", "finetune_lr", "val_tasks", "eval_every")
    if args.eval_every % args.log_every:
        raise ValueError(f"eval_every ({args.eval_every}) must be a multiple of log_every ({args.log_every})")
    if args.algorithm == "reptile" and args.inner_steps < 2:
        raise ValueError("reptile needs --inner-steps >= 2 (with one step it is joint training)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # the meta-training task stream (the same in every process)
    group = mo.distributed.init()  # under torchrun: the processes that share each task batch; else None
    data, (train_classes, val_classes, test_classes) = load_dataset(args)
    fewshot = dict(ways=args.ways, shots=args.shots, query_shots=args.query_shots)
    train = mo.tasks.FewShot(data.images, data.labels, classes=train_classes, **fewshot)
    test = mo.tasks.FewShot(data.images, data.labels, classes=test_classes, **fewshot)
    val = mo.tasks.FewShot(data.images, data.labels, classes=val_classes, **fewshot) if val_classes else None
    _, channels, size, _ = data.images.shape

    outputs = len(train_classes) if args.algorithm == "baseline" else args.ways
    model = conv4(channels, size, outputs, args.hidden)
    net = mo.nn.MetaSGD(model, init_lr=args.inner_lr) if args.algorithm == "metasgd" else model
    init_state = {k: v.clone() for k, v in net.state_dict().items()}  # for --eval-init
    meta_opt = torch.optim.Adam(net.parameters(), lr=args.meta_lr)

    def loss_fn(params, batch):  # cross-entropy of one task's images; batch norm uses the batch statistics
        x, y = batch
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    def accuracy(params, batch):
        x, y = batch
        return (torch.func.functional_call(model, params, (x,)).argmax(-1) == y).float().mean()

    # --- adaptation to one task: which parameters, which optimizer, how it is differentiated -----
    def adapt(meta, support, mode=None):
        if args.algorithm == "metasgd":  # meta = {"params": theta, "lrs": alpha}, rates built inside
            return mo.inner.adapt(loss_fn, meta["params"], support, mo.inner.meta_sgd(meta["lrs"]),
                                  steps=args.inner_steps, mode=mode)
        only = "head.*" if args.algorithm == "anil" else None  # ANIL: the body is shared, the head adapts
        return mo.inner.adapt(loss_fn, meta, support, mo.inner.sgd(args.inner_lr), steps=args.inner_steps,
                              mode=mode, only=only)

    def task_loss(meta, support, query):  # MAML-family meta-loss of one task
        mode = mo.inner.first_order() if args.algorithm == "fomaml" else mo.inner.unrolled()
        return loss_fn(adapt(meta, support, mode), query)

    # batch norm with batch statistics under vmap gives wrong second-order gradients (torch 2.13) and
    # metaops refuses it: the second-order algorithms loop over tasks; first-order ones may vmap
    strategy = "vmap" if args.algorithm == "fomaml" else "loop"

    def meta_iteration():  # sample a task batch, one Adam step on the meta-gradient
        support, query = train.sample_tasks(args.meta_batch, generator=g)
        support, query = mo.distributed.shard_tasks((support, query), group)  # this process's share of the tasks
        if args.algorithm == "reptile":  # theta - mean phi, no meta-graph
            params = mo.tree.stop_gradient(mo.nn.named_params(model))
            adapted = mo.map_tasks(lambda p, s: adapt(p, s, mo.inner.first_order()), in_dims=(None, 0),
                                   strategy="vmap")(params, support)
            loss = mo.map_tasks(loss_fn, in_dims=(0, 0), strategy="vmap")(adapted, query).mean()
            loss, grads = mo.distributed.all_reduce_mean(  # the mean over all processes' tasks
                (loss, mo.inner.reptile_grad(params, adapted)), count=len(support[1]), group=group)
        else:
            meta = net.meta_params() if args.algorithm == "metasgd" else mo.nn.named_params(model)
            loss, grads = mo.meta_value_and_grad(task_loss, meta, support, query, strategy=strategy,
                                                 process_group=group)
        meta_opt.zero_grad()
        if args.algorithm == "metasgd":
            for p, grad in zip(mo.tree.tree_leaves(meta), mo.tree.tree_leaves(grads)):
                p.grad = grad  # meta_params() holds net's own Parameters
        else:
            mo.nn.set_grads(model, grads)
        meta_opt.step()
        return loss

    # --- the baseline: plain classification of the training classes, minibatches of images ------
    is_train = torch.isin(data.labels, torch.tensor(train_classes))
    train_images, train_labels = data.images[is_train], data.labels[is_train]
    relabel = torch.full((len(data.class_names),), -1, dtype=torch.long)
    relabel[torch.tensor(train_classes)] = torch.arange(len(train_classes))

    def baseline_iteration():  # not split over processes: batch norm must see the whole minibatch, as in one
        picks = torch.randint(len(train_labels), (args.baseline_batch,), generator=g)  # (each process the same)
        x = train_images[picks]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        loss = F.cross_entropy(model(x), relabel[train_labels[picks]])
        meta_opt.zero_grad()
        loss.backward()
        meta_opt.step()
        return loss

    def finetune_head(params, support):  # a new zero head for the task's ways; the body stays fixed
        return mo.inner.adapt(loss_fn, params, support, mo.inner.sgd(args.finetune_lr), steps=args.finetune_steps,
                              mode=mo.inner.first_order(), only="head.*")

    # --- evaluation: accuracy on the query images after adapting on the support images ----------
    def task_accuracies(tasks: mo.tasks.FewShot, num_tasks: int, seed: int, state=None) -> Tensor:
        if state is not None:  # evaluate other weights (the initialisation) in the same model
            saved = {k: v.clone() for k, v in net.state_dict().items()}
            net.load_state_dict(state)
        support, query = tasks.sample_tasks(num_tasks, generator=torch.Generator().manual_seed(seed))
        if args.algorithm == "baseline":
            params = mo.tree.stop_gradient(mo.nn.named_params(model))
            head = params["head.weight"]
            params |= {"head.weight": head.new_zeros(args.ways, head.shape[1]),
                       "head.bias": head.new_zeros(args.ways)}

            def one(p, s, q):
                return accuracy(finetune_head(p, s), q)
        else:
            params = mo.tree.stop_gradient(net.meta_params() if args.algorithm == "metasgd"
                                           else mo.nn.named_params(model))

            def one(p, s, q):  # no meta-gradient here: first_order() computes the same adaptation
                return accuracy(adapt(p, s, mo.inner.first_order()), q)
        accuracies = mo.map_tasks(one, in_dims=(None, 0, 0), strategy="vmap")(params, support, query)
        if state is not None:
            net.load_state_dict(saved)
        return accuracies

    def log_row(iteration: int) -> dict[str, float]:
        if val is None or iteration % args.eval_every:
            return {}
        return {"val/accuracy": task_accuracies(val, args.val_tasks, args.eval_seed + 1).mean().item()}

    step = baseline_iteration if args.algorithm == "baseline" else meta_iteration
    history, run_metrics = meta_train(
        args, step, recipe="fewshot", state={"model": net, "meta_opt": meta_opt, "generator": g},
        loss_name="train_loss", fields=["val/accuracy"], on_log=log_row,
    )

    start = time.perf_counter()
    accuracies = task_accuracies(test, args.eval_tasks, args.eval_seed)
    metrics = summarize_tasks(accuracies, name="accuracy")
    if args.eval_init:  # the same tasks from the untrained weights: the paired gain isolates training
        at_init = task_accuracies(test, args.eval_tasks, args.eval_seed, state=init_state)
        metrics |= summarize_tasks(at_init, name="accuracy_init")
        metrics |= summarize_tasks(accuracies - at_init, name="accuracy_gain")
    metrics |= run_metrics | {"eval_seconds": time.perf_counter() - start}
    if not mo.distributed.is_main_process():  # another process of a distributed run: same metrics, no files
        return metrics
    out = Path(args.out_dir)
    save_json(out / "metrics.json", metrics)
    print(f"{args.algorithm}, {args.dataset}, {args.ways}-way {args.shots}-shot, {args.eval_tasks} test tasks: "
          + format_summary(metrics))
    curves = {"validation accuracy": (history["step"], history["val/accuracy"])} if val is not None else {}
    plot_learning_curve(out / "learning_curve.png", {"training loss": (history["step"], history["train/train_loss"]),
                                                     **curves},
                        title=f"{args.algorithm}, {args.dataset}, {args.ways}-way {args.shots}-shot",
                        ylabel="loss / accuracy", log_y=False)
    return metrics


if __name__ == "__main__":
    main(tyro.cli(Args))
