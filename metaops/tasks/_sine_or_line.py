"""Ambiguous regression: a sinusoid or a line, the mixed family of probabilistic MAML."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from metaops.tasks._sinusoid import SinusoidTask, _uniform

__all__ = ["LineTask", "SineOrLine"]


@dataclass(frozen=True)
class LineTask:
    """One line task, $y = a x + b$ (plain data).

    Examples:
        >>> task = LineTask(slope=2.0, intercept=-1.0)
        >>> task.target(torch.tensor([0.0, 1.0]))
        tensor([-1.,  1.])
        >>> task.label
        'line: slope=2.00, intercept=-1.00'
    """

    slope: float
    intercept: float

    @property
    def label(self) -> str:
        """A short description for plot titles."""
        return f"line: slope={self.slope:.2f}, intercept={self.intercept:.2f}"

    def target(self, x: Tensor) -> Tensor:
        """Evaluates $y = a x + b$ at ``x`` (any shape, e.g. a grid of shape `(points, 1)`)."""
        return self.slope * x + self.intercept

    def to_dict(self) -> dict[str, float]:
        """Returns the task as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class SineOrLine:
    r"""Sinusoids and lines mixed: ambiguous few-shot regression (Finn, Xu and Levine, 2018).

    Each task is, with probability ``sine_fraction``, a sinusoid $y = A\sin(x - \varphi)$
    ($A \sim U[0.1, 5]$, $\varphi \sim U[0, \pi]$; a [metaops.tasks.SinusoidTask][]) and
    otherwise a line $y = a x + b$ ($a, b \sim U[-3, 3]$; a [metaops.tasks.LineTask][]).
    Query inputs are $x \sim U[x_{\text{low}}, x_{\text{high}}]$; support inputs are drawn
    from ``support_range`` if given (a narrow window makes a few points consistent with both a
    sine and a line: the ambiguity that probabilistic MAML models), else from the same range.
    Targets get Gaussian noise of standard deviation ``noise_std``:
    $y = f(x) + \epsilon$, $\epsilon \sim \mathcal{N}(0, s^2)$. The API is that of
    [metaops.tasks.Sinusoid][]; ``sample_batch`` returns support and query sets of shape
    `(tasks, shots, 1)`.

    Args:
        amplitude_range: Range of $A$.
        phase_range: Range of $\varphi$.
        slope_range: Range of $a$.
        intercept_range: Range of $b$.
        input_range: Range of the query inputs (and of the support inputs by default).
        support_range: Range of the support inputs, or ``None`` for ``input_range``.
        sine_fraction: Probability that a task is a sinusoid, in $[0, 1]$.
        noise_std: Standard deviation $s \ge 0$ of the target noise.

    Raises:
        ValueError: For a range that is not finite with ``low < high``, a ``sine_fraction``
            outside $[0, 1]$ or a negative ``noise_std``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> dist = SineOrLine(support_range=(0.0, 2.0))
        >>> tasks = dist.sample_tasks(4, generator=g)
        >>> sorted({type(t).__name__ for t in tasks})
        ['LineTask', 'SinusoidTask']
        >>> (xs, ys), (xq, yq) = dist.sample_batch(tasks, 5, generator=g, query_shots=20)
        >>> xs.shape, yq.shape, bool(xs.min() >= 0.0 and xs.max() <= 2.0)
        (torch.Size([4, 5, 1]), torch.Size([4, 20, 1]), True)
    """

    amplitude_range: tuple[float, float] = (0.1, 5.0)
    phase_range: tuple[float, float] = (0.0, math.pi)
    slope_range: tuple[float, float] = (-3.0, 3.0)
    intercept_range: tuple[float, float] = (-3.0, 3.0)
    input_range: tuple[float, float] = (-5.0, 5.0)
    support_range: tuple[float, float] | None = None
    sine_fraction: float = 0.5
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        names = ["amplitude_range", "phase_range", "slope_range", "intercept_range", "input_range"]
        for name in names + (["support_range"] if self.support_range is not None else []):
            bounds = getattr(self, name)
            if len(bounds) != 2 or not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds) \
                    or not bounds[0] < bounds[1]:
                raise ValueError(f"SineOrLine: {name} must be a finite (low, high) with low < high, got {bounds}")
        if not 0.0 <= self.sine_fraction <= 1.0:
            raise ValueError(f"SineOrLine: sine_fraction must be in [0, 1], got {self.sine_fraction}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0.0):
            raise ValueError(f"SineOrLine: noise_std must be a finite number >= 0, got {self.noise_std}")

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator) -> list[SinusoidTask | LineTask]:
        """Samples ``num_tasks`` tasks, each a sinusoid with probability ``sine_fraction``.

        The generator advances by the same amount whatever the kinds drawn.

        Examples:
            >>> tasks = SineOrLine(sine_fraction=0.0).sample_tasks(2, generator=torch.Generator().manual_seed(0))
            >>> [type(t).__name__ for t in tasks]
            ['LineTask', 'LineTask']
        """
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
        is_sine = torch.rand(num_tasks, generator=generator, dtype=torch.float64) < self.sine_fraction
        a = _uniform(num_tasks, self.amplitude_range, generator)
        p = _uniform(num_tasks, self.phase_range, generator)
        s = _uniform(num_tasks, self.slope_range, generator)
        c = _uniform(num_tasks, self.intercept_range, generator)
        return [SinusoidTask(float(a[i]), float(p[i])) if is_sine[i] else LineTask(float(s[i]), float(c[i]))
                for i in range(num_tasks)]

    def sample_data(
        self, tasks: list[SinusoidTask | LineTask], shots: int, *, generator: torch.Generator,
        input_range: tuple[float, float] | None = None, dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Samples ``shots`` noisy points per task from ``input_range`` (default: ``self.input_range``).

        Returns ``(x, y)``, each of shape `(tasks, shots, 1)`. Sampling runs on the CPU
        generator (reproducible on every device); the result is moved to ``device``.

        Examples:
            >>> g = torch.Generator().manual_seed(0)
            >>> x, y = SineOrLine().sample_data([LineTask(2.0, 1.0)], 3, generator=g)
            >>> torch.allclose(y, 2.0 * x + 1.0)
            True
        """
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
            raise ValueError(f"shots must be an int >= 1, got {shots!r}")
        if not tasks:
            raise ValueError("SineOrLine.sample_data needs at least one task")
        low, high = input_range or self.input_range
        x = low + (high - low) * torch.rand(len(tasks), shots, 1, generator=generator, dtype=dtype)
        y = torch.stack([task.target(xi) for task, xi in zip(tasks, x)])
        if self.noise_std > 0:
            y = y + self.noise_std * torch.randn(y.shape, generator=generator, dtype=dtype)
        return x.to(device), y.to(device)

    def sample_batch(
        self, tasks: list[SinusoidTask | LineTask], shots: int, *, generator: torch.Generator,
        query_shots: int | None = None, dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Samples support (from ``support_range``) and query sets (``shots`` and ``query_shots`` points).

        Examples:
            >>> g = torch.Generator().manual_seed(0)
            >>> dist = SineOrLine()
            >>> support, query = dist.sample_batch(dist.sample_tasks(3, generator=g), 5, generator=g)
            >>> support[0].shape, query[0].shape
            (torch.Size([3, 5, 1]), torch.Size([3, 5, 1]))
        """
        support = self.sample_data(tasks, shots, generator=generator, input_range=self.support_range, dtype=dtype,
                                   device=device)
        query = self.sample_data(tasks, query_shots or shots, generator=generator, dtype=dtype, device=device)
        return support, query
