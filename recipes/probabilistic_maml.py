# Docs: docs/recipes/probabilistic_maml.md (site page: recipes/probabilistic_maml/)
"""Probabilistic MAML (PLATIPUS; Finn, Xu, Levine, NeurIPS 2018) on ambiguous few-shot regression.

A learned Gaussian over the initial parameters, N(mu, sigma^2), trained with a variational lower
bound; at meta-test several task models are sampled (ancestral sampling: theta from the prior
adjusted by one gradient step on the support set, then MAML's gradient step on the support set).
The tasks mix sinusoids and lines (``metaops.tasks.SineOrLine``) with 5 noisy support points in a
narrow input window, so a support set often fits both a sine and a line. Plain MAML is trained
on the same task batches for comparison. Run ``python -m recipes.probabilistic_maml --help``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import torch
import tyro
from torch import Tensor, nn

import metaops as mo
from metaops.experiment import (
    FitPanel,
    RunArgs,
    format_summary,
    mean_confidence_interval,
    meta_train,
    plot_fits,
    plot_learning_curve,
    save_json,
    summarize_tasks,
)


@dataclass
class Args(RunArgs):  # + run control: --out-dir, --iterations, --seed, --resume, --log-every, ...
    out_dir: str = "runs/probabilistic_maml"
    iterations: int = 5_000
    """meta-iterations"""
    log_every: int = 100
    """iterations per CSV/TensorBoard row"""
    meta_batch: int = 10
    """tasks per meta-update"""
    shots: int = 5
    """support points per task (K), for training and evaluation"""
    query_shots: int = 10
    """query points per task during meta-training"""
    support_range: tuple[float, float] = (-2.0, 2.0)
    """input window of the support points (queries cover [-5, 5]): narrow, so that tasks are ambiguous"""
    noise_std: float = 0.3
    """standard deviation of the Gaussian noise on every observed target"""
    inner_steps: int = 1
    """gradient steps on the support set after sampling theta (training and evaluation)"""
    inner_lr: float = 0.01
    """alpha: the step size of those steps"""
    init_std: float = 0.1
    """initial sigma_theta (prior) and sqrt(v_q) (posterior) of every weight"""
    init_gamma: float = 0.01
    """initial gamma_p and gamma_q (the learned step sizes of the inference steps), per weight"""
    kl_weight: float = 0.01
    """weight of KL(q || p) against the query MSE in the meta-objective"""
    meta_lr: float = 1e-3
    """Adam step size of the meta-update (of mu, the log standard deviations and the gammas)"""
    hidden: int = 40
    """width of the two hidden layers of the 1-h-h-1 ReLU MLP"""
    samples: int = 20
    """task models sampled per held-out task (the predictive distribution, best-of-K, calibration)"""
    baseline: bool = True
    """also meta-train plain MAML (same net, inner_lr, inner_steps) on the same task batches"""
    eval_tasks: int = 300
    """held-out tasks for the final evaluation"""
    eval_query_shots: int = 100
    """query points per held-out task, noiseless targets, uniform over [-5, 5]"""
    eval_seed: int = 1_000
    """seed of the held-out tasks (the validation tasks use eval_seed + 1)"""
    val_tasks: int = 100
    """held-out tasks for the validation curve"""
    eval_every: int = 500
    """iterations between validation evaluations (a multiple of log_every)"""

    def validate(self, *positive: str) -> None:
        super().validate(*positive, "meta_batch", "shots", "query_shots", "inner_steps", "inner_lr", "init_std",
                         "init_gamma", "meta_lr", "hidden", "eval_query_shots", "val_tasks", "eval_every")
        if self.samples < 2:
            raise ValueError(f"samples must be >= 2 (a spread and intervals need several models), got {self.samples}")
        if self.eval_tasks < 2:
            raise ValueError(f"eval_tasks must be >= 2 for a confidence interval, got {self.eval_tasks}")
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise ValueError(f"kl_weight must be a finite number >= 0, got {self.kl_weight}")
        if self.eval_every % self.log_every:
            raise ValueError(f"eval_every ({self.eval_every}) must be a multiple of log_every ({self.log_every})")
        self.task_distribution()  # a bad support_range or noise_std raises here

    def task_distribution(self) -> mo.tasks.SineOrLine:
        return mo.tasks.SineOrLine(support_range=self.support_range, noise_std=self.noise_std)


Params = dict[str, Tensor]  # dict(model.named_parameters()); the meta-parameters are a dict of these
LossFn = Callable[[Params, Any], Tensor]
COVERAGE_LEVELS = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)  # central-interval probabilities p


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class Platipus(nn.Module):
    """The meta-parameters: mu_theta (the model itself), log sigma_theta, log sqrt(v_q), gamma_p, gamma_q.

    Each is a tensor per weight of the model, keyed by the model's parameter names (``.`` stored
    as ``:`` in the ParameterDicts), so one Adam over ``parameters()`` trains them all.
    """

    def __init__(self, model: nn.Module, *, init_std: float, init_gamma: float) -> None:
        super().__init__()
        self.model = model

        def per_weight(value: float) -> nn.ParameterDict:
            return nn.ParameterDict({name.replace(".", ":"): nn.Parameter(torch.full_like(p, value))
                                     for name, p in mo.nn.named_params(model).items()})

        self.prior_log_std, self.q_log_std = per_weight(math.log(init_std)), per_weight(math.log(init_std))
        self.gamma_p, self.gamma_q = per_weight(init_gamma), per_weight(init_gamma)

    def meta_params(self) -> dict[str, dict[str, Tensor]]:
        """The pytree to differentiate; its leaves are this module's own Parameters."""
        def named(d: nn.ParameterDict) -> dict[str, Tensor]:
            return {key.replace(":", "."): value for key, value in d.items()}

        return {"mean": mo.nn.named_params(self.model), "prior_log_std": named(self.prior_log_std),
                "q_log_std": named(self.q_log_std), "gamma_p": named(self.gamma_p), "gamma_q": named(self.gamma_q)}


def gaussian_sample(mean: dict[str, Tensor], log_std: dict[str, Tensor], noise: dict[str, Tensor]) -> dict[str, Tensor]:
    """Reparameterised sample mean + exp(log_std) * noise, noise ~ N(0, I): differentiable in mean and log_std."""
    return mo.tree.tree_map(lambda m, s, e: m + s.exp() * e, mean, log_std, noise)


def gaussian_kl(q_mean, q_log_std, p_mean, p_log_std) -> Tensor:
    """KL(N(q_mean, q_std^2) || N(p_mean, p_std^2)) of diagonal Gaussians over parameter dicts, summed."""
    def kl(mq, sq, mp, sp):
        return (sp - sq + 0.5 * (torch.exp(2 * (sq - sp)) + ((mq - mp) * torch.exp(-sp)) ** 2 - 1)).sum()

    return sum(mo.tree.tree_leaves(mo.tree.tree_map(kl, q_mean, q_log_std, p_mean, p_log_std)))


def prior(loss_fn: LossFn, meta: dict[str, Params], support: Any) -> tuple[Params, Params]:
    r"""The support-adjusted prior $p(\theta \mid D^{tr}) = \mathcal{N}(\mu_\theta - \gamma_p \nabla_\mu
    L(\mu_\theta, D^{tr}), \sigma_\theta^2)$ as ``(mean, log_std)``."""
    mean = mo.inner.adapt(loss_fn, meta["mean"], support, mo.inner.meta_sgd(meta["gamma_p"]), steps=1)
    return mean, meta["prior_log_std"]


def posterior(loss_fn: LossFn, meta: dict[str, Params], query: Any) -> tuple[Params, Params]:
    r"""The inference network $q(\theta \mid D^{test}) = \mathcal{N}(\mu_\theta - \gamma_q \nabla_\mu
    L(\mu_\theta, D^{test}), v_q)$ as ``(mean, log_std)``, $\log\sqrt{v_q}$ learned."""
    mean = mo.inner.adapt(loss_fn, meta["mean"], query, mo.inner.meta_sgd(meta["gamma_q"]), steps=1)
    return mean, meta["q_log_std"]


def platipus_objective(loss_fn: LossFn, meta: dict[str, Params], support: Any, query: Any, noise: Params, *,
                       inner_lr: float, inner_steps: int, kl_weight: float) -> Tensor:
    r"""One task's negative lower bound (Algorithm 1): $L(\phi, D^{test}) + \beta\, KL(q \,\|\, p)$.

    $\theta = $ mean of $q$ + std of $q$ $\odot$ ``noise`` (reparameterised), $\phi$ = ``inner_steps``
    SGD steps of size $\alpha$ = ``inner_lr`` from $\theta$ on the support set. Differentiable in
    every leaf of ``meta`` (second order through all three gradient steps).
    """
    q_mean, q_log_std = posterior(loss_fn, meta, query)
    theta = gaussian_sample(q_mean, q_log_std, noise)
    phi = mo.inner.adapt(loss_fn, theta, support, mo.inner.sgd(inner_lr), steps=inner_steps)
    return loss_fn(phi, query) + kl_weight * gaussian_kl(q_mean, q_log_std, *prior(loss_fn, meta, support))


def sample_task_models(loss_fn: LossFn, meta: dict[str, Params], support: Any, noise: Params, *, inner_lr: float,
                       inner_steps: int) -> Params:
    """Algorithm 2 (meta-testing): K task models, theta ~ p(theta | support), then SGD on the support set.

    ``noise`` has a leading sample dimension K; so has every leaf of the returned parameters.
    """
    mean, log_std = prior(loss_fn, meta, support)

    def one(eps):
        theta = gaussian_sample(mean, log_std, eps)
        return mo.inner.adapt(loss_fn, theta, support, mo.inner.sgd(inner_lr), steps=inner_steps)

    return torch.func.vmap(one)(noise)


def quantile_coverage(samples: Tensor, target: Tensor) -> Tensor:
    """Per level p of COVERAGE_LEVELS: the fraction of targets inside the central p-interval of the samples.

    ``samples`` of shape `(K, points)` (one task's sampled predictions), ``target`` `(points,)`.
    """
    levels = COVERAGE_LEVELS.to(samples.dtype)
    low = torch.quantile(samples, (1 - levels) / 2, dim=0)  # (levels, points)
    high = torch.quantile(samples, (1 + levels) / 2, dim=0)
    return ((low <= target) & (target <= high)).to(samples.dtype).mean(-1)


def main(args: Args) -> dict[str, float]:
    args.validate()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # the task stream and the training samples of theta
    group = mo.distributed.init()  # under torchrun: the processes that share each task batch; else None
    dist = args.task_distribution()
    net = Platipus(make_model(args.hidden), init_std=args.init_std, init_gamma=args.init_gamma)
    meta_opt = torch.optim.Adam(net.parameters(), lr=args.meta_lr)
    maml_model = make_model(args.hidden)  # the baseline: plain MAML, point estimate of the init
    maml_opt = torch.optim.Adam(maml_model.parameters(), lr=args.meta_lr)

    def predict(params, x):
        return torch.func.functional_call(net.model, params, (x,))

    def loss_fn(params, batch):  # L(theta, D): MSE, the Gaussian negative log-likelihood up to scale
        x, y = batch
        return ((predict(params, x) - y) ** 2).mean()  # not F.mse_loss: wrong under nested vmap (torch 2.13)

    def adapt_support(theta, support):  # phi = theta - alpha grad L(theta, support), inner_steps times
        return mo.inner.adapt(loss_fn, theta, support, mo.inner.sgd(args.inner_lr), steps=args.inner_steps)

    # --- Algorithm 1 (meta-training): the negative variational lower bound of one task ------
    def task_objective(meta, support, query, noise):
        return platipus_objective(loss_fn, meta, support, query, noise, inner_lr=args.inner_lr,
                                  inner_steps=args.inner_steps, kl_weight=args.kl_weight)

    def maml_task_loss(params, support, query):
        return loss_fn(adapt_support(params, support), query)

    def meta_iteration():  # one task batch: a PLATIPUS step, and a MAML step on the same batch
        tasks = dist.sample_tasks(args.meta_batch, generator=g)
        support, query = dist.sample_batch(tasks, args.shots, generator=g, query_shots=args.query_shots)
        meta = net.meta_params()
        noise = {k: torch.randn((args.meta_batch, *v.shape), generator=g) for k, v in meta["mean"].items()}
        support, query, noise = mo.distributed.shard_tasks((support, query, noise), group)  # this process's tasks
        loss, grads = mo.meta_value_and_grad(task_objective, meta, support, query, noise, strategy="vmap",
                                             process_group=group)
        meta_opt.zero_grad()
        for p, grad in zip(mo.tree.tree_leaves(meta), mo.tree.tree_leaves(grads)):
            p.grad = grad  # meta_params() holds net's own Parameters, so this feeds meta_opt
        meta_opt.step()
        if args.baseline:
            _, maml_grads = mo.meta_value_and_grad(maml_task_loss, mo.nn.named_params(maml_model), support, query,
                                                   strategy="vmap", process_group=group)
            maml_opt.zero_grad()
            mo.nn.set_grads(maml_model, maml_grads)
            maml_opt.step()
        return loss

    # --- Algorithm 2 (meta-testing): sample theta from the support-adjusted prior, adapt, predict
    def sampled_predictions(meta, support, x, noise):  # one task; noise has a leading sample dim K
        models = sample_task_models(loss_fn, meta, support, noise, inner_lr=args.inner_lr, inner_steps=args.inner_steps)
        return torch.func.vmap(predict, in_dims=(0, None))(models, x)  # (K, points, 1)

    def maml_prediction(params, support, x):
        return predict(adapt_support(params, support), x)

    def held_out(num_tasks: int, seed: int):  # noisy support in the narrow window; noiseless queries everywhere
        generator = torch.Generator().manual_seed(seed)
        tasks = dist.sample_tasks(num_tasks, generator=generator)
        support = dist.sample_data(tasks, args.shots, generator=generator, input_range=args.support_range)
        query = replace(dist, noise_std=0.0).sample_data(tasks, args.eval_query_shots, generator=generator)
        noise = {k: torch.randn((num_tasks, args.samples, *v.shape), generator=generator)
                 for k, v in mo.nn.named_params(net.model).items()}
        return tasks, support, query, noise

    def evaluate(num_tasks: int, seed: int) -> dict[str, Tensor]:  # per-task tensors, no meta-gradient
        _, support, (x, y), noise = held_out(num_tasks, seed)
        meta = mo.tree.stop_gradient(net.meta_params())
        preds = mo.map_tasks(sampled_predictions, in_dims=(None, 0, 0, 0))(meta, support, x, noise)[..., 0]
        y = y[..., 0]  # preds: (tasks, K, points), y: (tasks, points)
        sample_mse = ((preds - y[:, None]) ** 2).mean(-1)  # (tasks, K)
        out = {"mse_sample": sample_mse.mean(1), "mse_best": sample_mse.min(1).values,
               "mse_ensemble": ((preds.mean(1) - y) ** 2).mean(-1),
               "coverage": torch.stack([quantile_coverage(p, t) for p, t in zip(preds, y)]),  # (tasks, levels)
               "spread": preds.std(1)}  # (tasks, points)
        inside = (x[..., 0] >= args.support_range[0]) & (x[..., 0] <= args.support_range[1])
        out["spread_inside"] = (out["spread"] * inside).sum(-1) / inside.sum(-1).clamp(min=1)
        out["spread_outside"] = (out["spread"] * ~inside).sum(-1) / (~inside).sum(-1).clamp(min=1)
        if args.baseline:
            maml_params = mo.tree.stop_gradient(mo.nn.named_params(maml_model))
            maml_pred = mo.map_tasks(maml_prediction, in_dims=(None, 0, 0))(maml_params, support, x)[..., 0]
            out["maml_pred"], out["y"] = maml_pred, y
            out["maml_mse"] = ((maml_pred - y) ** 2).mean(-1)
        return out

    def log_row(iteration: int) -> dict[str, float]:
        if iteration % args.eval_every:
            return {}
        val = evaluate(args.val_tasks, args.eval_seed + 1)
        row = {f"val/{k}": val[k].mean().item() for k in ("mse_sample", "mse_best", "mse_ensemble")}
        if args.baseline:
            row["val/maml_mse"] = val["maml_mse"].mean().item()
        return row

    val_fields = ["val/mse_sample", "val/mse_best", "val/mse_ensemble", *(["val/maml_mse"] if args.baseline else [])]
    state = {"model": net, "meta_opt": meta_opt, "generator": g}
    if args.baseline:
        state |= {"maml_model": maml_model, "maml_opt": maml_opt}
    history, run_metrics = meta_train(args, meta_iteration, recipe="probabilistic_maml", state=state,
                                      fields=val_fields, on_log=log_row)

    # --- held-out evaluation: errors of the samples, calibration, paired comparison with MAML -
    ev = evaluate(args.eval_tasks, args.eval_seed)
    metrics: dict[str, float] = {}
    for name in ("mse_sample", "mse_best", "mse_ensemble", "spread_inside", "spread_outside"):
        metrics |= summarize_tasks(ev[name], name=name)
    coverage = ev["coverage"].mean(0)  # pooled over tasks (every task has the same number of points)
    metrics["calibration_error"] = (coverage - COVERAGE_LEVELS).abs().mean().item()
    metrics |= {f"coverage_{round(100 * p)}": coverage[i].item() for i, p in enumerate(COVERAGE_LEVELS.tolist())
                if round(100 * p) in (50, 80, 90, 95)}
    if args.baseline:
        metrics |= summarize_tasks(ev["maml_mse"], name="maml_mse")
        for name in ("mse_best", "mse_ensemble"):  # paired over the same tasks: > 0 means better than MAML
            metrics[f"gain_{name}_vs_maml"], metrics[f"gain_{name}_vs_maml_ci95"] = mean_confidence_interval(
                ev["maml_mse"] - ev[name])
        # MAML with a fixed predictive sigma (its mean validation MSE): z-intervals around its one prediction
        sigma = evaluate(args.val_tasks, args.eval_seed + 1)["maml_mse"].mean().sqrt()
        z = torch.tensor([NormalDist().inv_cdf(0.5 + p / 2) for p in COVERAGE_LEVELS.tolist()], dtype=torch.float64)
        inside = (ev["y"] - ev["maml_pred"]).abs()[..., None].double() <= z * sigma  # (tasks, points, levels)
        maml_coverage = inside.double().mean((0, 1))
        metrics["maml_calibration_error"] = (maml_coverage - COVERAGE_LEVELS).abs().mean().item()
    metrics |= run_metrics
    if not mo.distributed.is_main_process():  # another process of a distributed run: same metrics, no files
        return metrics
    out = Path(args.out_dir)
    save_json(out / "metrics.json", metrics)
    print("held-out: " + format_summary(metrics) + f", calibration error {metrics['calibration_error']:.3f}"
          + (f" (MAML + fixed sigma {metrics['maml_calibration_error']:.3f})" if args.baseline else ""))

    # --- plots: learning curve, sampled functions on held-out tasks, calibration -------------
    curves = {"meta-objective (query MSE + KL)": (history["step"], history["train/meta_loss"]),
              "validation, mean sample MSE": (history["step"], history["val/mse_sample"]),
              "validation, best-of-K MSE": (history["step"], history["val/mse_best"])}
    if args.baseline:
        curves["validation, MAML MSE"] = (history["step"], history["val/maml_mse"])
    plot_learning_curve(out / "learning_curve.png", curves, title="Probabilistic MAML, sines and lines")
    tasks, support, _, noise = held_out(6, args.eval_seed)
    grid = torch.linspace(*dist.input_range, 200).view(-1, 1)
    meta = mo.tree.stop_gradient(net.meta_params())
    shown = min(args.samples, 6)
    preds = mo.map_tasks(sampled_predictions, in_dims=(None, 0, None, 0))(
        meta, support, grid, mo.tree.tree_map(lambda e: e[:, :shown], noise))[..., 0]
    panels = []
    for i, task in enumerate(tasks):
        panel_curves = {f"sample {k + 1}": preds[i, k] for k in range(shown)}
        if args.baseline:
            panel_curves["MAML"] = maml_prediction(mo.nn.named_params(maml_model), mo.tree.tree_index(support, i),
                                                   grid).detach().view(-1)
        panels.append(FitPanel(x=grid.view(-1), target=task.target(grid).view(-1), support_x=support[0][i],
                               support_y=support[1][i], curves=panel_curves, title=task.label))
    plot_fits(out / "samples.png", panels,
              title=f"{args.shots} noisy support points in {list(args.support_range)}: sampled task models")
    levels = COVERAGE_LEVELS.tolist()
    calibration = {f"probabilistic MAML, {args.samples} samples": (levels, coverage.tolist())}
    if args.baseline:
        calibration["MAML, fixed Gaussian sigma"] = (levels, maml_coverage.tolist())
    calibration["ideal"] = (levels, levels)
    plot_learning_curve(out / "calibration.png", calibration, title="Calibration on held-out tasks",
                        xlabel="central interval probability p", ylabel="fraction of query targets inside",
                        log_y=False)
    return metrics


if __name__ == "__main__":
    main(tyro.cli(Args))
