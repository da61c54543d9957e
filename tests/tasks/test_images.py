"""Image sets for few-shot classification: the folder loader (on tiny PNGs), digits, glyphs."""

import numpy as np
import pytest
import torch
from PIL import Image

from metaops.tasks import FewShot, load_digits, load_glyphs, load_image_folder


def write_png(path, value, size=(5, 5), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=value).save(path)


def test_flat_and_nested_layouts_sorted_and_labelled(tmp_path):
    for i in range(3):  # omniglot-like: root/<alphabet>/<character>/<image>.png
        write_png(tmp_path / "Latin" / "character02" / f"img{i}.png", 10 + i)
        write_png(tmp_path / "Latin" / "character01" / f"img{i}.png", 20 + i)
        write_png(tmp_path / "Greek" / "character01" / f"img{i}.png", 30 + i)
    (tmp_path / "Latin" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path)
    assert data.class_names == ("Greek/character01", "Latin/character01", "Latin/character02")
    assert data.images.dtype == torch.uint8 and data.images.shape == (9, 1, 5, 5)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.images[:, 0, 0, 0].tolist() == [30, 31, 32, 20, 21, 22, 10, 11, 12]
    tasks = FewShot(*data[:2], ways=3, shots=1, query_shots=2)
    (xs, _), _ = tasks.sample_tasks(2, generator=torch.Generator().manual_seed(0))
    assert xs.shape == (2, 3, 1, 5, 5) and xs.max() <= 1.0


def test_resize_and_rgb(tmp_path):
    write_png(tmp_path / "a" / "0.png", (255, 0, 0), size=(7, 9), mode="RGB")
    write_png(tmp_path / "b" / "0.jpg", 128, size=(4, 4))
    with pytest.raises(ValueError, match=r"b/0.jpg is 4x4, other images are 9x7; pass image_size"):
        load_image_folder(tmp_path)
    data = load_image_folder(tmp_path, image_size=6, channels=3)
    assert data.images.shape == (2, 3, 6, 6)
    assert data.images[1, :, 3, 3].tolist() == [128, 128, 128]  # gray -> RGB
    red = load_image_folder(tmp_path, image_size=6, channels=3).images[0, :, 3, 3].tolist()
    assert red == [255, 0, 0]


def test_matplotlib_written_images_load(tmp_path):
    import matplotlib.image

    (tmp_path / "c").mkdir()
    matplotlib.image.imsave(tmp_path / "c" / "x.png", np.eye(4), cmap="gray")
    data = load_image_folder(tmp_path)
    assert data.images.shape == (1, 1, 4, 4) and data.images[0, 0, 0, 0] == 255 and data.images[0, 0, 0, 1] == 0


def test_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "class").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path / "empty")
    write_png(tmp_path / "bad" / "a" / "good.png", 0)
    (tmp_path / "bad" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_image_folder(tmp_path / "bad")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        load_image_folder(tmp_path / "bad", channels=2)


def test_glyphs_are_deterministic_cached_and_distinct(tmp_path, monkeypatch):
    data = load_glyphs(tmp_path, image_size=16, copies=1)
    assert data.images.shape == (66 * 16, 1, 16, 16) and len(data.class_names) == 66
    assert len(list(tmp_path.glob("glyphs-*.pt"))) == 1
    assert (data.images.flatten(1).amax(1) > 100).all()  # no blank glyph
    assert torch.equal(load_glyphs(tmp_path / "other", image_size=16, copies=1).images, data.images)
    import metaops.tasks._images as images_module

    monkeypatch.setattr(images_module, "_render_glyphs", None)  # the second call must read the cache
    again = load_glyphs(tmp_path, image_size=16, copies=1)
    assert torch.equal(again.images, data.images) and again.class_names == data.class_names
    # the 16 fonts of one character differ, and characters differ from each other
    per_class = data.images.float().view(66, 16, -1).mean(1)
    assert torch.cdist(per_class, per_class).add(torch.eye(66) * 1e9).min() > 1.0


def test_digits():
    pytest.importorskip("sklearn")
    data = load_digits()
    assert data.images.shape == (1797, 1, 8, 8) and data.images.dtype == torch.float32
    assert data.images.min() == 0.0 and data.images.max() == 1.0
    assert torch.bincount(data.labels).min() >= 170 and data.class_names[3] == "3"
