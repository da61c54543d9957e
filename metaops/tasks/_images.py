"""Labelled image sets for few-shot classification: an image-folder loader and two offline benchmarks."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["LabelledImages", "load_image_folder", "load_digits", "load_glyphs"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class LabelledImages(NamedTuple):
    """Images with integer class labels and the classes' names (plain data).

    Attributes:
        images: Shape `(n, C, H, W)`; ``uint8`` (0..255) or floating (0..1).
        labels: Class labels ``0..len(class_names)-1`` of shape `(n,)` (int64).
        class_names: Name of each class (e.g. its folder, relative to the root).

    Examples:
        >>> data = LabelledImages(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), ("cat", "dog"))
        >>> data.class_names[int(data.labels[1])]
        'dog'
    """

    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]


def load_image_folder(root: str | os.PathLike, *, image_size: int | None = None, channels: int = 1) -> LabelledImages:
    """Loads a class-per-folder image tree (Omniglot, mini-ImageNet layouts) into memory.

    Every folder under ``root`` that directly holds image files is one class, named by its path
    relative to ``root``: ``root/<class>/<image>.png`` as well as nested layouts such as
    Omniglot's ``root/<alphabet>/<character>/<image>.png`` (class ``"<alphabet>/<character>"``).
    Classes are numbered in sorted order of their names, images in sorted order of their file
    names, so the result does not depend on the file system. Files with other suffixes are
    ignored. Nothing is downloaded.

    Args:
        root: The top folder.
        image_size: Resize every image to ``image_size x image_size`` (bilinear); ``None``
            (default) keeps the sizes, which must then all agree.
        channels: 1 (grayscale) or 3 (RGB); images are converted.

    Returns:
        A [metaops.tasks.LabelledImages][] with ``uint8`` images of shape `(n, channels, H, W)`;
        [metaops.tasks.FewShot][] scales them to ``[0, 1]``.

    Raises:
        FileNotFoundError: If ``root`` is not a folder.
        ValueError: If no image is found, an image cannot be read (names the file), or sizes
            differ without ``image_size`` (names the file).

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ["latin/a", "latin/b", "greek/alpha"]:
        ...     (root / name).mkdir(parents=True)
        ...     for i in range(2):
        ...         Image.new("L", (6, 6), color=40 * i).save(root / name / f"{i}.png")
        >>> data = load_image_folder(root)
        >>> data.images.shape, data.labels.tolist(), data.class_names
        (torch.Size([6, 1, 6, 6]), [0, 0, 1, 1, 2, 2], ('greek/alpha', 'latin/a', 'latin/b'))
    """
    from PIL import Image  # a dependency of matplotlib

    if channels not in (1, 3):
        raise ValueError(f"load_image_folder: channels must be 1 or 3, got {channels}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"load_image_folder: {root} is not a folder")
    classes: dict[str, list[Path]] = {}
    for folder, _, files in os.walk(root):
        found = sorted(f for f in files if f.lower().endswith(IMAGE_SUFFIXES))
        if found:
            classes[Path(folder).relative_to(root).as_posix()] = [Path(folder) / f for f in found]
    if not classes:
        raise ValueError(f"load_image_folder: no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    names = tuple(sorted(classes))
    images, labels, size = [], [], None
    for label, name in enumerate(names):
        for path in classes[name]:
            try:
                with Image.open(path) as image:
                    image = image.convert("L" if channels == 1 else "RGB")
                    if image_size is not None:
                        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
                    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
                    width, height = image.size
            except (OSError, ValueError) as e:
                raise ValueError(f"load_image_folder: cannot read image {path}: {e}") from e
            if size is None:
                size = (height, width)
            elif (height, width) != size:
                raise ValueError(f"load_image_folder: {path} is {height}x{width}, other images are "
                                 f"{size[0]}x{size[1]}; pass image_size= to resize them all")
            images.append(array.view(height, width, channels).permute(2, 0, 1))
            labels.append(label)
    return LabelledImages(torch.stack(images), torch.tensor(labels, dtype=torch.long), names)


def load_digits() -> LabelledImages:
    """Loads scikit-learn's bundled handwritten digits: 1797 images of 8x8 pixels, 10 classes.

    The data ships inside scikit-learn (the optional extra ``pip install "metaops[fewshot]"``),
    so nothing is downloaded. Pixel values 0..16 are scaled to ``[0, 1]``.

    Returns:
        A [metaops.tasks.LabelledImages][]: float32 images of shape `(1797, 1, 8, 8)`, labels
        ``0..9``, class names ``"0"``..``"9"``.

    Raises:
        ImportError: If scikit-learn is not installed (says how to install it).

    Examples:
        >>> data = load_digits()
        >>> data.images.shape, len(data.class_names)
        (torch.Size([1797, 1, 8, 8]), 10)
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise ImportError('load_digits needs scikit-learn: pip install "metaops[fewshot]"') from e
    bunch = sklearn_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return LabelledImages(images, torch.as_tensor(bunch.target, dtype=torch.long),
                          tuple(str(c) for c in range(10)))


# Characters that stay distinct across fonts: letters, digits, and the capitals whose shape
# differs from the lower case (C O S U V W X Z look like c o s u v w x z; I like l and 1).
GLYPH_CHARACTERS = (
    "abcdefghijklmnopqrstuvwxyz" + "ABDEFGHJKLMNPQRTY" + "0123456789" + "?!&%#@$+=<>{}"
)
# The TrueType fonts bundled with matplotlib that draw every character of GLYPH_CHARACTERS.
GLYPH_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
_GLYPH_VERSION = 1


def load_glyphs(
    cache_dir: str | os.PathLike | None = None, *, image_size: int = 28, copies: int = 2, seed: int = 0
) -> LabelledImages:
    r"""Renders a many-class character set from the fonts bundled with matplotlib (offline).

    Each class is one character of ``GLYPH_CHARACTERS`` (lower-case letters, the capitals that
    differ from them, digits and 13 symbols: 66 classes); each instance is that character in
    one of 16 DejaVu and STIX font styles (sans, mono, serif, STIX; regular, bold, italic),
    drawn white on black, centred, at about 70% of the image height, then moved by a small
    random affine map (rotation $\pm 10^\circ$, scale $0.9..1.1$, shear $\pm 0.15$, shift
    $\pm 1$ px). ``copies`` jittered instances per font give ``16 * copies`` images per class.

    The set is built deterministically (``seed``) on first use, in a few seconds, and cached
    as ``glyphs-<hash>.pt`` in ``cache_dir``; later calls load the cache.

    Args:
        cache_dir: Where the cache lives; ``None`` (default) means ``$METAOPS_CACHE`` or
            ``~/.cache/metaops``.
        image_size: Side of the square images.
        copies: Jittered instances per character and font.
        seed: Seed of the jitter.

    Returns:
        A [metaops.tasks.LabelledImages][]: ``uint8`` images of shape
        `(66 * 16 * copies, 1, image_size, image_size)`, labels in order of
        ``GLYPH_CHARACTERS``, the characters as class names.

    Examples:
        >>> import tempfile
        >>> data = load_glyphs(tempfile.mkdtemp(), image_size=12, copies=1)
        >>> data.images.shape, data.class_names[:3]
        (torch.Size([1056, 1, 12, 12]), ('a', 'b', 'c'))
    """
    if image_size < 8 or copies < 1:
        raise ValueError(f"load_glyphs: need image_size >= 8 and copies >= 1, got {image_size}, {copies}")
    config = {"version": _GLYPH_VERSION, "characters": GLYPH_CHARACTERS, "fonts": GLYPH_FONTS,
              "image_size": image_size, "copies": copies, "seed": seed}
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir is not None else Path(
        os.environ.get("METAOPS_CACHE", Path.home() / ".cache" / "metaops"))
    path = folder / f"glyphs-{key}.pt"
    if path.exists():
        cached = torch.load(path, weights_only=True)
        return LabelledImages(cached["images"], cached["labels"], tuple(cached["class_names"]))
    data = _render_glyphs(image_size=image_size, copies=copies, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"images": data.images, "labels": data.labels, "class_names": list(data.class_names)}, partial)
    partial.replace(path)  # atomic: a concurrent reader never sees half a file
    return data


def _render_glyphs(*, image_size: int, copies: int, seed: int) -> LabelledImages:
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    generator = torch.Generator().manual_seed(seed)
    canvas = 2 * image_size
    images, labels = [], []
    for label, character in enumerate(GLYPH_CHARACTERS):
        for font_name in GLYPH_FONTS:
            font = ImageFont.truetype(str(font_dir / font_name), size=round(0.7 * image_size))
            base = Image.new("L", (canvas, canvas), 0)
            ImageDraw.Draw(base).text((canvas / 2, canvas / 2), character, fill=255, font=font, anchor="mm")
            for _ in range(copies):
                angle, scale, shear, dx, dy = (torch.rand(5, generator=generator) * 2 - 1).tolist()
                image = base.transform(
                    (canvas, canvas), Image.Transform.AFFINE,
                    _affine(angle * math.radians(10), 1 + 0.1 * scale, 0.15 * shear, dx, dy, canvas / 2),
                    resample=Image.Resampling.BILINEAR,
                )
                offset = canvas // 4
                image = image.crop((offset, offset, offset + image_size, offset + image_size))
                images.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(
                    1, image_size, image_size))
                labels.append(label)
    return LabelledImages(torch.stack(images), torch.tensor(labels, dtype=torch.long), tuple(GLYPH_CHARACTERS))


def _affine(angle: float, scale: float, shear: float, dx: float, dy: float, centre: float) -> tuple[float, ...]:
    """PIL's inverse affine coefficients (output -> input) of rotate-shear-scale about ``centre``, then shift."""
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    a, b, d, e = cos, sin + shear * cos, -sin, cos - shear * sin
    c = centre - a * (centre + dx) - b * (centre + dy)
    f = centre - d * (centre + dx) - e * (centre + dy)
    return (a, b, c, d, e, f)
