"""Supervised task distributions (meta-RL tasks live in ``metaops.envs``)."""

from metaops.tasks._polynomial import Polynomial, PolynomialTask
from metaops.tasks._sinusoid import Sinusoid, SinusoidTask

__all__ = ["Sinusoid", "SinusoidTask", "Polynomial", "PolynomialTask"]
