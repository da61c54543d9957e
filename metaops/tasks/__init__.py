"""Supervised task distributions (meta-RL tasks live in ``metaops.envs``).

Regression (sinusoids, polynomials, sinusoids and lines mixed) and N-way K-shot classification over labelled images
(``FewShot``), with loaders for an image-folder tree and two offline benchmarks.
"""

from metaops.tasks._fewshot import FewShot, split_classes
from metaops.tasks._images import LabelledImages, load_digits, load_glyphs, load_image_folder
from metaops.tasks._polynomial import Polynomial, PolynomialTask
from metaops.tasks._sine_or_line import LineTask, SineOrLine
from metaops.tasks._sinusoid import Sinusoid, SinusoidTask

__all__ = [
    "Sinusoid",
    "SinusoidTask",
    "Polynomial",
    "PolynomialTask",
    "SineOrLine",
    "LineTask",
    "FewShot",
    "split_classes",
    "LabelledImages",
    "load_image_folder",
    "load_digits",
    "load_glyphs",
]
