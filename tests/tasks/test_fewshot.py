"""metaops.tasks.FewShot and split_classes: shapes, labels, distinct images, seeds, errors."""

import pytest
import torch

from metaops.tasks import FewShot, split_classes


def identified(classes=8, per_class=10, size=3):
    """Images whose every pixel is the image's index, labels ``index % classes``."""
    n = classes * per_class
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, size, size).contiguous()
    return images, torch.arange(n) % classes


def test_shapes_labels_and_images_match_their_classes():
    images, labels = identified()
    tasks = FewShot(images, labels, ways=4, shots=2, query_shots=3, classes=[0, 2, 3, 5, 7])
    g = torch.Generator().manual_seed(0)
    classes = tasks.sample_classes(50, generator=g)
    (xs, ys), (xq, yq) = tasks.task_data(classes, generator=g)
    assert xs.shape == (50, 8, 1, 3, 3) and xq.shape == (50, 12, 1, 3, 3)
    assert ys.dtype == yq.dtype == torch.long and xs.dtype == torch.float32
    assert torch.equal(ys[0], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert torch.equal(yq[0], torch.arange(4).repeat_interleave(3))
    assert set(classes.flatten().tolist()) <= {0, 2, 3, 5, 7}
    assert all(len(set(row)) == 4 for row in classes.tolist())  # distinct classes per task
    index_s, index_q = xs[:, :, 0, 0, 0].long(), xq[:, :, 0, 0, 0].long()
    # every image carries task label j <=> it belongs to class classes[:, j]
    assert torch.equal(labels[index_s], classes.gather(1, ys))
    assert torch.equal(labels[index_q], classes.gather(1, yq))
    # support and query images are distinct within a task
    for s, q in zip(index_s.tolist(), index_q.tolist()):
        assert len(set(s + q)) == len(s) + len(q)


def test_sampling_is_uniform_over_classes_and_label_positions():
    images, labels = identified(classes=6, per_class=6, size=1)
    tasks = FewShot(images, labels, ways=3, shots=1, query_shots=1)
    classes = tasks.sample_classes(6000, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(classes[:, 0], minlength=6).float()  # class of label 0: uniform (1000 each)
    assert (counts - 1000).abs().max() < 120


def test_seeded_determinism_and_uint8_scaling():
    images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    tasks = FewShot(images, torch.arange(40) % 5, ways=5, shots=1, query_shots=2)

    def draw(seed):
        return tasks.sample_tasks(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    (a, _), (b, _) = draw(0), draw(0)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], draw(1)[0][0])
    assert a[0].dtype == torch.float64 and 0.0 <= a[0].min() and a[0].max() <= 1.0
    assert set((a[0] * 255).round().flatten().tolist()) <= set(images.double().flatten().tolist())


def test_uneven_class_sizes_never_pad():
    images, labels = identified(classes=3, per_class=10)
    keep = (labels != 1) | (torch.arange(30) < 9)  # class 1 keeps 3 images (indices 1, 4, 7)
    tasks = FewShot(images[keep], labels[keep], ways=3, shots=2, query_shots=1)
    (xs, ys), (xq, _) = tasks.sample_tasks(200, generator=torch.Generator().manual_seed(0))
    picked = torch.cat([xs, xq], 1)[:, :, 0, 0, 0].long()
    from_class_1 = picked[picked % 3 == 1]
    assert set(from_class_1.tolist()) == {1, 4, 7}


def test_errors_name_the_problem():
    images, labels = identified(classes=4, per_class=3)
    with pytest.raises(ValueError, match="5-way tasks need at least 5 classes, got 4"):
        FewShot(images, labels, ways=5, shots=1, query_shots=1)
    with pytest.raises(ValueError, match=r"need 4 images per class; too few in 4 class\(es\) \(class 0: 3"):
        FewShot(images, labels, ways=2, shots=1, query_shots=3)
    with pytest.raises(ValueError, match=r"shape \(n, C, H, W\)"):
        FewShot(images[:, 0], labels, ways=2, shots=1)
    with pytest.raises(ValueError, match="labels must be integers"):
        FewShot(images, labels.float(), ways=2, shots=1)
    with pytest.raises(ValueError, match="ways >= 2"):
        FewShot(images, labels, ways=1, shots=1)
    tasks = FewShot(images, labels, ways=2, shots=1, query_shots=1, classes=[0, 1])
    with pytest.raises(ValueError, match="class 3 is not among"):
        tasks.task_data(torch.tensor([[0, 3]]), generator=torch.Generator())


def test_split_classes_is_disjoint_seeded_and_checked():
    train, val, test = split_classes(20, (12, 4, 4), seed=3)
    assert sorted(train + val + test) == list(range(20))
    assert (train, val, test) == split_classes(20, (12, 4, 4), seed=3)
    assert (train, val, test) != split_classes(20, (12, 4, 4), seed=4)
    assert split_classes(5, (2, 0, 2), seed=0)[1] == []
    with pytest.raises(ValueError, match="add up to 11, more than the 10 classes"):
        split_classes(10, (6, 3, 2), seed=0)
    with pytest.raises(ValueError, match="repeat"):
        split_classes([1, 1, 2], (1, 1), seed=0)
