"""Polynomial regression: random coefficients, a harder relative of the sinusoid family."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from metaops.tasks._sinusoid import _uniform

__all__ = ["PolynomialTask", "Polynomial"]


@dataclass(frozen=True)
class PolynomialTask:
    r"""One polynomial task, $y = \sum_{k=0}^{d} c_k x^k$ (plain data).

    Attributes:
        coefficients: $(c_0, c_1, \dots, c_d)$, lowest degree first (stored as a tuple of floats).

    Examples:
        >>> task = PolynomialTask(coefficients=(1.0, 0.0, 2.0))      # 1 + 2 x^2
        >>> task.target(torch.tensor([[0.0], [1.0], [2.0]])).view(-1)
        tensor([1., 3., 9.])
        >>> task.label
        'c=(1.00, 0.00, 2.00)'
    """

    coefficients: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.coefficients:
            raise ValueError("PolynomialTask needs at least one coefficient (c_0)")
        object.__setattr__(self, "coefficients", tuple(float(c) for c in self.coefficients))

    @property
    def degree(self) -> int:
        """The degree $d$: the number of coefficients minus one."""
        return len(self.coefficients) - 1

    @property
    def label(self) -> str:
        """A short description for plot titles."""
        return "c=(" + ", ".join(f"{c:.2f}" for c in self.coefficients) + ")"

    def target(self, x: Tensor) -> Tensor:
        r"""Evaluates $y = \sum_k c_k x^k$ at ``x`` (any shape, e.g. a grid of shape `(points, 1)`)."""
        return _horner(torch.tensor(self.coefficients, dtype=x.dtype, device=x.device), x)

    def to_dict(self) -> dict[str, list[float]]:
        """Returns the task as a plain dict."""
        return {"coefficients": list(self.coefficients)}


@dataclass(frozen=True)
class Polynomial:
    r"""Polynomial regression tasks: random coefficients, uniform inputs.

    Tasks $y = \sum_{k=0}^{d} c_k x^k$ of degree $d$ with every coefficient
    $c_k \sim U[c_{\text{low}}, c_{\text{high}}]$ independently and inputs
    $x \sim U[x_{\text{low}}, x_{\text{high}}]$. The API is that of
    [metaops.tasks.Sinusoid][]: tasks are plain data sampled from a seeded generator, and
    ``sample_batch`` returns float32 support and query sets of shape `(tasks, shots, 1)`.

    Args:
        degree: The degree $d \ge 0$ (``degree + 1`` coefficients per task).
        coeff_range: Range $(c_{\text{low}}, c_{\text{high}})$ of every coefficient.
        input_range: Range $(x_{\text{low}}, x_{\text{high}})$ of the inputs.

    Raises:
        ValueError: If ``degree`` is not an int ``>= 0`` or a range is not finite with
            ``low < high``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> dist = Polynomial(degree=3, coeff_range=(-1.0, 1.0), input_range=(-2.0, 2.0))
        >>> tasks = dist.sample_tasks(2, generator=g)
        >>> len(tasks[0].coefficients)
        4
        >>> (xs, ys), (xq, yq) = dist.sample_batch(tasks, shots=5, generator=g, query_shots=7)
        >>> xs.shape, yq.shape, yq.dtype
        (torch.Size([2, 5, 1]), torch.Size([2, 7, 1]), torch.float32)
    """

    degree: int = 3
    coeff_range: tuple[float, float] = (-1.0, 1.0)
    input_range: tuple[float, float] = (-2.0, 2.0)

    def __post_init__(self) -> None:
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 0:
            raise ValueError(f"Polynomial: degree must be an int >= 0, got {self.degree!r}")
        for name in ("coeff_range", "input_range"):
            bounds = getattr(self, name)
            if len(bounds) != 2 or not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds) \
                    or not bounds[0] < bounds[1]:
                raise ValueError(f"Polynomial: {name} must be a finite (low, high) with low < high, got {bounds}")

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator) -> list[PolynomialTask]:
        """Samples ``num_tasks`` tasks (``degree + 1`` uniform coefficients each).

        Examples:
            >>> tasks = Polynomial(degree=1).sample_tasks(3, generator=torch.Generator().manual_seed(0))
            >>> len(tasks), tasks[0].degree
            (3, 1)
        """
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
        c = _uniform(num_tasks * (self.degree + 1), self.coeff_range, generator).view(num_tasks, self.degree + 1)
        return [PolynomialTask(tuple(float(ck) for ck in row)) for row in c]

    def sample_data(
        self, tasks: list[PolynomialTask], shots: int, *, generator: torch.Generator,
        dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Samples ``shots`` points per task: ``(x, y)`` each of shape ``(tasks, shots, 1)``.

        Sampling runs on the CPU generator (reproducible on every device); the result is moved
        to ``device``. ``y`` is evaluated by Horner's rule in ``dtype``.

        Raises:
            ValueError: If ``shots < 1``, ``tasks`` is empty, or a task's degree is not
                ``self.degree``.

        Examples:
            >>> g = torch.Generator().manual_seed(0)
            >>> x, y = Polynomial(degree=2).sample_data([PolynomialTask((0.0, 1.0, 1.0))], 3, generator=g)
            >>> torch.allclose(y, x + x ** 2)
            True
        """
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
            raise ValueError(f"shots must be an int >= 1, got {shots!r}")
        if not tasks:
            raise ValueError("Polynomial.sample_data needs at least one task")
        bad = sorted({t.degree for t in tasks if t.degree != self.degree})
        if bad:
            raise ValueError(f"Polynomial(degree={self.degree}) got tasks of degree {bad}")
        coefficients = torch.tensor([t.coefficients for t in tasks], dtype=dtype).view(len(tasks), 1, 1, -1)
        low, high = self.input_range
        x = low + (high - low) * torch.rand(len(tasks), shots, 1, generator=generator, dtype=dtype)
        return x.to(device), _horner(coefficients, x).to(device)

    def sample_batch(
        self, tasks: list[PolynomialTask], shots: int, *, generator: torch.Generator,
        query_shots: int | None = None, dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Samples support and query sets (``shots`` and ``query_shots`` points) per task.

        Examples:
            >>> g = torch.Generator().manual_seed(0)
            >>> dist = Polynomial(degree=2)
            >>> support, query = dist.sample_batch(dist.sample_tasks(4, generator=g), 10, generator=g)
            >>> support[0].shape
            torch.Size([4, 10, 1])
        """
        support = self.sample_data(tasks, shots, generator=generator, dtype=dtype, device=device)
        query = self.sample_data(tasks, query_shots or shots, generator=generator, dtype=dtype, device=device)
        return support, query


def _horner(coefficients: Tensor, x: Tensor) -> Tensor:
    """$\\sum_k c_k x^k$ by Horner's rule, ``coefficients[..., k]`` $= c_k$ broadcast against ``x``."""
    y = torch.zeros_like(x) + coefficients[..., -1]
    for k in reversed(range(coefficients.shape[-1] - 1)):
        y = y * x + coefficients[..., k]
    return y
