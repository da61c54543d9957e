"""N-way K-shot classification tasks over any labelled images, and seeded class splits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["FewShot", "split_classes"]


def split_classes(classes: int | Sequence[int], sizes: Sequence[int], *, seed: int) -> tuple[list[int], ...]:
    """Splits classes into disjoint groups (train, validation, test, ...) by a seeded permutation.

    Meta-learning evaluates on classes never seen in training, so the split is over classes,
    not over images. The same ``seed`` always gives the same split.

    Args:
        classes: The number of classes ``C`` (meaning ``0..C-1``) or the class labels.
        sizes: The size of each group, e.g. ``(32, 10, 11)``; a size may be 0 (an empty
            group); their sum must not exceed the number of classes (the rest are unused).
        seed: Seed of the permutation.

    Returns:
        One sorted list of labels per entry of ``sizes``, pairwise disjoint.

    Raises:
        ValueError: If a size is negative, the sizes add up to more than the classes, or the
            labels repeat.

    Examples:
        >>> train, val, test = split_classes(10, (6, 2, 2), seed=0)
        >>> len(train), len(val), len(test), sorted(train + val + test) == list(range(10))
        (6, 2, 2, True)
        >>> split_classes([3, 5, 7], (1, 2), seed=0) == split_classes([3, 5, 7], (1, 2), seed=0)
        True
    """
    labels = list(range(classes)) if isinstance(classes, int) else [int(c) for c in classes]
    if len(set(labels)) != len(labels):
        raise ValueError(f"split_classes: the class labels repeat: {labels}")
    if any(s < 0 for s in sizes):
        raise ValueError(f"split_classes: sizes must be >= 0, got {tuple(sizes)}")
    if sum(sizes) > len(labels):
        raise ValueError(f"split_classes: sizes {tuple(sizes)} add up to {sum(sizes)}, "
                         f"more than the {len(labels)} classes")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    groups, start = [], 0
    for size in sizes:
        groups.append(sorted(labels[i] for i in order[start:start + size]))
        start += size
    return tuple(groups)


class FewShot:
    r"""N-way K-shot classification tasks over labelled images in memory.

    A task picks ``ways`` distinct classes $c_1, \dots, c_N$ (uniformly, in random order)
    among ``classes`` and, for each, ``shots + query_shots`` distinct images of that class:
    ``shots`` form the support set, ``query_shots`` the query set. Class $c_j$ gets the task
    label $j$, so labels are ``0..ways-1`` and their meaning changes from task to task. Within
    a set the images are ordered class by class (labels ``0, 0, ..., 1, 1, ...``).

    Sampling is vectorised over tasks (one ``argsort`` for the classes, one for the images) and
    draws only from ``generator``, so a seed fixes the tasks. ``uint8`` images (as
    [metaops.tasks.load_image_folder][] returns them, 4x smaller than float) are scaled to
    ``[0, 1]``; floating images are returned as they are (cast to ``dtype``).

    Args:
        images: Images of shape `(n, C, H, W)`, ``uint8`` or floating.
        labels: Integer class labels of shape `(n,)`.
        ways: Classes per task $N$.
        shots: Support images per class $K$.
        query_shots: Query images per class.
        classes: The class labels tasks draw from (e.g. the training split of
            [metaops.tasks.split_classes][]); ``None`` (default) takes every label present.

    Raises:
        ValueError: For mis-shaped images or labels, ``ways < 2``, ``shots < 1``,
            ``query_shots < 1``, fewer than ``ways`` classes, a class in ``classes`` without
            ``shots + query_shots`` images (names the classes and their counts).

    Examples:
        >>> images = torch.rand(60, 1, 8, 8)
        >>> labels = torch.arange(60) % 6                      # 6 classes, 10 images each
        >>> tasks = FewShot(images, labels, ways=5, shots=1, query_shots=3)
        >>> (xs, ys), (xq, yq) = tasks.sample_tasks(4, generator=torch.Generator().manual_seed(0))
        >>> xs.shape, ys.shape, xq.shape
        (torch.Size([4, 5, 1, 8, 8]), torch.Size([4, 5]), torch.Size([4, 15, 1, 8, 8]))
        >>> ys[0], yq[0]
        (tensor([0, 1, 2, 3, 4]), tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]))
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        ways: int,
        shots: int,
        query_shots: int = 15,
        classes: Sequence[int] | None = None,
    ) -> None:
        if images.dim() != 4:
            raise ValueError(f"FewShot: images must have shape (n, C, H, W), got {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
            raise ValueError(f"FewShot: labels must be integers of shape ({images.shape[0]},), "
                             f"got {labels.dtype} of shape {tuple(labels.shape)}")
        if ways < 2 or shots < 1 or query_shots < 1:
            raise ValueError(f"FewShot: need ways >= 2, shots >= 1, query_shots >= 1; "
                             f"got ways={ways}, shots={shots}, query_shots={query_shots}")
        labels = labels.long().cpu()
        present = torch.unique(labels)
        chosen = present if classes is None else torch.as_tensor(list(classes), dtype=torch.long)
        if len(torch.unique(chosen)) != len(chosen):
            raise ValueError(f"FewShot: classes repeat: {chosen.tolist()}")
        if len(chosen) < ways:
            raise ValueError(f"FewShot: {ways}-way tasks need at least {ways} classes, got {len(chosen)}")
        counts = (labels[None, :] == chosen[:, None]).sum(1)
        short = [(int(c), int(n)) for c, n in zip(chosen, counts) if n < shots + query_shots]
        if short:
            listed = ", ".join(f"class {c}: {n}" for c, n in short[:10]) + (", ..." if len(short) > 10 else "")
            raise ValueError(f"FewShot: {shots}-shot tasks with {query_shots} query images need "
                             f"{shots + query_shots} images per class; too few in {len(short)} "
                             f"class(es) ({listed})")
        self.images, self.labels = images, labels
        self.ways, self.shots, self.query_shots = ways, shots, query_shots
        self.classes: list[int] = chosen.tolist()
        # index[c, j]: the j-th image of the c-th chosen class (padded with 0 past counts[c])
        self._counts = counts
        index = torch.zeros(len(chosen), int(counts.max()), dtype=torch.long)
        for row, c in enumerate(chosen):
            members = torch.nonzero(labels == c).view(-1)
            index[row, : len(members)] = members
        self._index = index

    def __repr__(self) -> str:
        return (f"FewShot(ways={self.ways}, shots={self.shots}, query_shots={self.query_shots}, "
                f"classes={len(self.classes)}, images={self.images.shape[0]})")

    def sample_classes(self, num_tasks: int, *, generator: torch.Generator) -> Tensor:
        """Samples the classes of ``num_tasks`` tasks: original labels of shape `(tasks, ways)`.

        Column $j$ is the class that gets task label $j$.

        Examples:
            >>> tasks = FewShot(torch.rand(20, 1, 2, 2), torch.arange(20) % 4, ways=2, shots=1, query_shots=1)
            >>> tasks.sample_classes(3, generator=torch.Generator().manual_seed(0)).shape
            torch.Size([3, 2])
        """
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        rows = torch.rand(num_tasks, len(self.classes), generator=generator).argsort(1)[:, : self.ways]
        return torch.as_tensor(self.classes)[rows]

    def task_data(
        self, classes: Tensor, *, generator: torch.Generator, dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Samples support and query sets for tasks with the given classes.

        Args:
            classes: Original labels of shape `(tasks, ways)` (e.g. from ``sample_classes``).
            generator: Draws the images (distinct within a class and task).
            dtype: Floating dtype of the images.
            device: Where the result goes (sampling runs on the CPU).

        Returns:
            ``((x_support, y_support), (x_query, y_query))`` with images of shape
            `(tasks, ways * shots, C, H, W)` and `(tasks, ways * query_shots, C, H, W)`, and
            task labels ``0..ways-1`` (int64) of shape `(tasks, ways * shots)` and
            `(tasks, ways * query_shots)`.

        Examples:
            >>> images = torch.arange(8.0).view(8, 1, 1, 1)
            >>> tasks = FewShot(images, torch.arange(8) // 4, ways=2, shots=1, query_shots=1)
            >>> (xs, ys), _ = tasks.task_data(torch.tensor([[1, 0]]), generator=torch.Generator().manual_seed(0))
            >>> ys, bool(xs[0, 0] >= 4), bool(xs[0, 1] < 4)     # label 0 is class 1 here
            (tensor([[0, 1]]), True, True)
        """
        position = {c: i for i, c in enumerate(self.classes)}
        try:
            rows = torch.tensor([[position[int(c)] for c in task] for task in classes.tolist()], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"FewShot.task_data: class {e.args[0]} is not among this distribution's classes") from None
        if rows.dim() != 2 or rows.shape[1] != self.ways:
            raise ValueError(f"FewShot.task_data: classes must have shape (tasks, {self.ways}), "
                             f"got {tuple(classes.shape)}")
        tasks, per_class = rows.shape[0], self.shots + self.query_shots
        counts = self._counts[rows]                                    # (tasks, ways)
        width = self._index.shape[1]
        keys = torch.rand(tasks, self.ways, width, generator=generator)
        keys = keys.masked_fill(torch.arange(width) >= counts[..., None], 2.0)  # padding sorts last
        picks = keys.argsort(-1)[..., :per_class]                      # (tasks, ways, K + Q)
        indices = self._index[rows[..., None], picks]                  # image indices
        x = self.images[indices.view(-1)].to(device)
        x = x.to(dtype) / 255.0 if x.dtype == torch.uint8 else x.to(dtype)
        x = x.view(tasks, self.ways, per_class, *self.images.shape[1:])
        y = torch.arange(self.ways, device=x.device).view(1, -1, 1).expand(tasks, -1, per_class)
        support = (x[:, :, : self.shots].flatten(1, 2), y[:, :, : self.shots].flatten(1, 2))
        query = (x[:, :, self.shots:].flatten(1, 2), y[:, :, self.shots:].flatten(1, 2))
        return support, query

    def sample_tasks(
        self, num_tasks: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Samples ``num_tasks`` tasks: ``task_data(sample_classes(...))``.

        Returns:
            ``((x_support, y_support), (x_query, y_query))``, shaped as in ``task_data``.

        Examples:
            >>> tasks = FewShot(torch.rand(40, 3, 4, 4), torch.arange(40) % 8, ways=3, shots=2, query_shots=2)
            >>> support, query = tasks.sample_tasks(5, generator=torch.Generator().manual_seed(0))
            >>> support[0].shape, query[1].shape
            (torch.Size([5, 6, 3, 4, 4]), torch.Size([5, 6]))
        """
        classes = self.sample_classes(num_tasks, generator=generator)
        return self.task_data(classes, generator=generator, dtype=dtype, device=device)
