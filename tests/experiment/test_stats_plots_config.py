import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from metaops.experiment import (
    FitPanel,
    check_positive,
    check_same_config,
    format_summary,
    last_finite,
    mean_confidence_interval,
    plot_fits,
    plot_learning_curve,
    summarize_steps,
    summarize_tasks,
)


def test_mean_confidence_interval_matches_the_formula():
    values = np.random.default_rng(0).normal(size=600)
    mean, half = mean_confidence_interval(values)
    assert mean == pytest.approx(values.mean())
    assert half == pytest.approx(1.959964 * values.std(ddof=1) / math.sqrt(600), rel=1e-6)
    _, wider = mean_confidence_interval(torch.as_tensor(values), confidence=0.99)
    assert wider == pytest.approx(2.575829 * values.std(ddof=1) / math.sqrt(600), rel=1e-6)


@pytest.mark.parametrize("values, confidence, message", [
    ([1.0], 0.95, "at least 2"), ([1.0, float("nan")], 0.95, "NaN/inf"), ([1.0, 2.0], 1.0, "confidence"),
])
def test_mean_confidence_interval_errors(values, confidence, message):
    with pytest.raises(ValueError, match=message):
        mean_confidence_interval(values, confidence)


def test_plots_write_pngs(tmp_path):
    plot_learning_curve(tmp_path / "c.png", {"a": ([1, 2, 3], [1.0, float("nan"), 0.5]), "b": ([1], [2.0])})
    x = torch.linspace(-1, 1, 10)
    plot_fits(tmp_path / "f.png", [FitPanel(x=x, target=x, support_x=x[:3], support_y=x[:3],
                                            curves={"pre": x * 0, "post": x}, title="t")] * 4, title="fits")
    for name in ("c.png", "f.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_errors(tmp_path):
    with pytest.raises(ValueError, match="3 steps but 2 values"):
        plot_learning_curve(tmp_path / "c.png", {"a": ([1, 2, 3], [1.0, 2.0])})
    with pytest.raises(ValueError, match="no curve has a finite point"):
        plot_learning_curve(tmp_path / "c.png", {"a": ([1], [float("nan")])})
    with pytest.raises(ValueError, match="no panels"):
        plot_fits(tmp_path / "f.png", [])
    with pytest.raises(ValueError, match="'bad' has 2 points"):
        plot_fits(tmp_path / "f.png", [FitPanel(x=[0, 1, 2], target=[0, 1, 2], support_x=[], support_y=[],
                                                curves={"bad": [0, 1]})])


@pytest.mark.parametrize("value", [0, -1, 0.0, float("inf"), float("nan"), True, "3", None])
def test_check_positive_rejects(value):
    with pytest.raises(ValueError, match="^lr must be > 0"):
        check_positive(SimpleNamespace(shots=1, lr=value), "shots", "lr")


@pytest.mark.parametrize("value", [(), [], (0.5, 0.0), (0.5, float("nan")), (1, True), ("3",), (None,)])
def test_check_positive_rejects_bad_schedules(value):
    with pytest.raises(ValueError, match="^lr must be one or more numbers > 0"):
        check_positive(SimpleNamespace(lr=value), "lr", allow_none=True)


def test_check_positive_accepts_schedules_and_optional_fields():
    config = SimpleNamespace(lr=(0.5, 0.25), shots=[1], kl=None)
    check_positive(config, "lr", "shots", "kl", allow_none=True)
    with pytest.raises(ValueError, match="^kl must be > 0, got None"):  # None only where allowed
        check_positive(config, "lr", "kl")


def test_check_same_config_names_every_difference():
    check_same_config({"a": 1, "n": 5}, {"a": 1, "n": 9}, ignore=["n"])
    with pytest.raises(ValueError, match=r"a: 1 \(checkpoint\) != 2 \(now\); b: 'x' \(checkpoint\) != '<missing>'"):
        check_same_config({"a": 1, "b": "x"}, {"a": 2})


def test_summarize_tasks_counts_diverged_tasks_instead_of_dropping_them():
    values = [1.0, 2.0, 3.0, float("nan"), float("inf")]
    out = summarize_tasks(values, name="mse_5")
    assert out["mse_5"] == math.inf and math.isnan(out["mse_5_ci95"]) and out["mse_5_diverged"] == 2.0
    assert (out["mse_5_finite"], out["mse_5_finite_ci95"]) == pytest.approx(mean_confidence_interval([1.0, 2.0, 3.0]))
    assert summarize_tasks([1.0, 2.0, 3.0], name="m") == dict(zip(["m", "m_ci95"], mean_confidence_interval([1, 2, 3])))
    with pytest.raises(ValueError, match="at least 2"):
        summarize_tasks([1.0, float("nan")], name="m")


def test_summarize_steps_and_format_summary_count_diverged_tasks():
    curves = torch.tensor([[4.0, 2.0, 1.0], [6.0, 2.0, 3.0], [5.0, float("inf"), float("nan")]])
    metrics = summarize_steps(curves, (1, 2), prefix="mse")
    assert metrics["mse_pre"] == pytest.approx(5.0)
    assert metrics["mse_1"] == math.inf and metrics["mse_1_finite"] == pytest.approx(2.0)
    assert metrics["mse_1_diverged"] == 1.0 and metrics["mse_2_diverged"] == 1.0
    line = format_summary(metrics)
    assert line.startswith("mse_pre 5.000 ± ") and "mse_1_finite 2.000 ± 0.000" in line
    assert line.endswith("mse_1_diverged on 1 task(s), mse_2_diverged on 1 task(s)")
    assert math.isnan(last_finite([float("nan")])) and last_finite([]) != last_finite([])


def _plotted_ylim(curves, monkeypatch):
    import matplotlib.figure

    from metaops.experiment import _plots

    seen = {}
    monkeypatch.setattr(_plots, "_save", lambda fig, path: seen.setdefault("ylim", fig.axes[0].get_ylim()))
    _plots.plot_learning_curve("unused.png", curves)
    assert isinstance(matplotlib.figure.Figure, type)
    return seen["ylim"]


def test_learning_curve_keeps_negative_returns_in_view(monkeypatch):
    returns = [-400.0 + 10 * i for i in range(30)]  # every value negative, e.g. meta-RL returns
    bottom, top = _plotted_ylim({"return": (list(range(30)), returns)}, monkeypatch)
    assert bottom <= min(returns) and top >= max(returns)


def test_learning_curve_cuts_a_rare_spike_either_way(monkeypatch):
    losses = [1.0 - 0.01 * i for i in range(100)]
    losses[50] = 1e6
    bottom, top = _plotted_ylim({"loss": (list(range(100)), losses)}, monkeypatch)
    assert top < 10 and bottom <= min(v for v in losses)
    returns = [-10.0 + 0.1 * i for i in range(100)]
    returns[50] = -1e6
    bottom, top = _plotted_ylim({"return": (list(range(100)), returns)}, monkeypatch)
    assert bottom > -100 and top >= max(returns)
