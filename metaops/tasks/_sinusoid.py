"""Sinusoid regression, exactly as in the MAML paper."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = ["SinusoidTask", "Sinusoid"]


@dataclass(frozen=True)
class SinusoidTask:
    """One sinusoid task, $y = A \\sin(x - \\varphi)$ (plain data).

    Examples:
        >>> task = SinusoidTask(amplitude=1.0, phase=0.5)
        >>> task
        SinusoidTask(amplitude=1.0, phase=0.5)
        >>> task.target(torch.tensor([0.5]))
        tensor([0.])
        >>> task.label
        'A=1.00, phase=0.50'
    """

    amplitude: float
    phase: float

    @property
    def label(self) -> str:
        """A short description for plot titles."""
        return f"A={self.amplitude:.2f}, phase={self.phase:.2f}"

    def target(self, x: Tensor) -> Tensor:
        """Evaluates $y = A \\sin(x - \\varphi)$ at ``x`` (any shape, e.g. a grid of shape `(points, 1)`)."""
        return self.amplitude * torch.sin(x - self.phase)

    def to_dict(self) -> dict[str, float]:
        """Returns the task as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class Sinusoid:
    r"""The sinusoid task distribution of Finn et al. (2017).

    Tasks $y = A\sin(x - \varphi)$ with amplitude $A \sim U[0.1, 5]$, phase
    $\varphi \sim U[0, \pi]$ and inputs $x \sim U[-5, 5]$.

    Args:
        amplitude_range: Range of $A$.
        phase_range: Range of $\varphi$.
        input_range: Range of $x$.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> dist = Sinusoid()
        >>> tasks = dist.sample_tasks(2, generator=g)
        >>> (xs, ys), (xq, yq) = dist.sample_batch(tasks, shots=5, generator=g)
        >>> xs.shape, yq.shape
        (torch.Size([2, 5, 1]), torch.Size([2, 5, 1]))
    """

    amplitude_range: tuple[float, float] = (0.1, 5.0)
    phase_range: tuple[float, float] = (0.0, math.pi)
    input_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        for name in ("amplitude_range", "phase_range", "input_range"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"Sinusoid: {name} must be a finite (low, high) with low < high")

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator) -> list[SinusoidTask]:
        """Samples ``num_tasks`` tasks.

        Examples:
            >>> len(Sinusoid().sample_tasks(3, generator=torch.Generator().manual_seed(0)))
            3
        """
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        a = _uniform(num_tasks, self.amplitude_range, generator)
        p = _uniform(num_tasks, self.phase_range, generator)
        return [SinusoidTask(float(ai), float(pi)) for ai, pi in zip(a, p)]

    def sample_data(
        self, tasks: list[SinusoidTask], shots: int, *, generator: torch.Generator,
        dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Samples ``shots`` points per task: ``(x, y)`` each of shape ``(tasks, shots, 1)``.

        Sampling runs on the CPU generator (reproducible on every device); the result is moved
        to ``device``.

        Examples:
            >>> g = torch.Generator().manual_seed(0)
            >>> x, y = Sinusoid().sample_data([SinusoidTask(2.0, 0.0)], 3, generator=g)
            >>> torch.allclose(y, 2.0 * torch.sin(x))
            True
        """
        if shots < 1:
            raise ValueError(f"shots must be >= 1, got {shots}")
        amplitude = torch.tensor([t.amplitude for t in tasks], dtype=dtype).view(-1, 1, 1)
        phase = torch.tensor([t.phase for t in tasks], dtype=dtype).view(-1, 1, 1)
        low, high = self.input_range
        x = low + (high - low) * torch.rand(len(tasks), shots, 1, generator=generator, dtype=dtype)
        return x.to(device), (amplitude * torch.sin(x - phase)).to(device)

    def sample_batch(
        self, tasks: list[SinusoidTask], shots: int, *, generator: torch.Generator,
        query_shots: int | None = None, dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Samples support and query sets (``shots`` and ``query_shots`` points) per task.

        Examples:
            >>> g = torch.Generator().manual_seed(0)
            >>> dist = Sinusoid()
            >>> support, query = dist.sample_batch(dist.sample_tasks(4, generator=g), 10, generator=g)
            >>> support[0].shape
            torch.Size([4, 10, 1])
        """
        support = self.sample_data(tasks, shots, generator=generator, dtype=dtype, device=device)
        query = self.sample_data(tasks, query_shots or shots, generator=generator, dtype=dtype, device=device)
        return support, query


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
