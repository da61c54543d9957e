"""A per-task replay buffer of transitions for off-policy learners (SAC).

The buffer holds one ring buffer per task in preallocated tensors of shape
``(tasks, capacity, ...)``: every call to ``add`` offers a batch of transitions for all tasks at
once (a ``where=`` mask keeps only some of them, so tasks may fill at different rates), and
``sample`` draws one minibatch per task, shaped ``(tasks, batch_size, ...)``, ready for
``torch.func.vmap`` over the task dimension. Sampling uses the buffer's own ``torch.Generator``,
so runs are reproducible, and ``state_dict`` captures everything (storage, per-task positions and
sizes, generator state) for an exact resume.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["Transitions", "ReplayBuffer"]


class Transitions(NamedTuple):
    r"""A batch of transitions $(s, a, r, s', d)$, the input of the SAC losses.

    A ``NamedTuple`` is a pytree, so a task batch ``(tasks, B, ...)`` passes through
    ``torch.func.vmap`` and [metaops.tree.tree_index][] like any tensor.

    Attributes:
        obs: Observations $s$, shape `(..., B, obs_dim)`.
        actions: Actions $a$ taken in $s$, shape `(..., B, act_dim)`.
        rewards: Rewards $r$, shape `(..., B)`.
        next_obs: Next observations $s'$, shape `(..., B, obs_dim)` (the final observation of an
            episode that ended, not the first of the next one).
        terminated: Whether $s'$ is terminal, shape `(..., B)`, ``bool``. Only true termination
            stops bootstrapping; an episode cut by a time limit (``truncated``) is not terminated.

    Examples:
        >>> batch = Transitions(torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4),
        ...                     torch.zeros(4, 3), torch.zeros(4, dtype=torch.bool))
        >>> batch.next_obs.shape
        torch.Size([4, 3])
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    terminated: Tensor


_ONE_DRAW_BELOW = 2**28
"""``torch.randint`` draws an index below ``2**28`` from one 32-bit number of the generator (larger ranges
take 64 bits), so with a smaller capacity every index costs the generator the same whatever its task's size:
a share of a batch (``sample(task_rows=...)``) can skip the other rows' draws without knowing their sizes.
``tests/rl/test_replay.py`` pins this behaviour of torch."""


def _shape(name: str, value: int | tuple[int, ...]) -> tuple[int, ...]:
    shape = (value,) if isinstance(value, int) else tuple(value)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ValueError(f"ReplayBuffer: {name} must be a positive int or a tuple of positive ints, got {value!r}")
    return shape


class ReplayBuffer:
    r"""Per-task ring buffers of transitions $(s, a, r, s', d)$ in preallocated tensors.

    Storage is ``(tasks, capacity, ...)`` per field, and every task $k$ has its own ring position
    $p_k$ and size $n_k \le C$. ``add`` offers $n$ transitions to every task at once; task $k$
    stores those that ``where`` selects for it (all of them by default), in order, at positions
    $p_k, p_k + 1, \dots \pmod C$, overwriting its oldest ones once it is full (of more than $C$
    selected at once only the last $C$ are kept). ``sample`` draws, for each task independently,
    ``batch_size`` indices uniformly with replacement from that task's $n_k$ stored transitions,
    with the buffer's ``torch.Generator`` (seeded by ``seed``): the same seed and the same history
    give the same indices. ``state_dict`` / ``load_state_dict`` resume exactly: storage, per-task
    positions and sizes, generator state.

    **Sizes.** Without ``where`` all tasks fill together and share one position and one size,
    ``position`` and ``size`` (ints). With ``where`` they may differ: ``positions`` and ``sizes``
    are the per-task values, `(tasks,)` ``int64``, and ``position`` / ``size`` raise a
    ``ValueError`` that points to them. ``len(buffer)`` is the smallest size, $\min_k n_k$ (the
    common size when the tasks filled together): ``sample`` works once it is positive.

    Floating inputs are converted to ``dtype`` (gymnasium gives ``float64`` observations);
    ``terminated`` must be ``bool``. Inputs may be tensors or NumPy arrays.

    Args:
        tasks: Number of tasks (use 1 for single-task training).
        capacity: Transitions kept per task, $C$.
        obs_shape: Shape of one observation (an int for vectors).
        act_shape: Shape of one action (an int for vectors).
        dtype: Floating dtype of observations, actions and rewards.
        device: Where the storage lives (sampled batches live there too).
        seed: Seed of the sampling generator.

    Raises:
        ValueError: If a size is not a positive int.
        TypeError: If ``dtype`` is not floating point.

    Examples:
        >>> buffer = ReplayBuffer(2, 100, obs_shape=3, act_shape=1, seed=0)
        >>> buffer.add(torch.zeros(2, 5, 3), torch.zeros(2, 5, 1), torch.ones(2, 5),
        ...            torch.zeros(2, 5, 3), torch.zeros(2, 5, dtype=torch.bool))  # 5 steps per task
        >>> len(buffer)
        5
        >>> batch = buffer.sample(8)
        >>> batch.obs.shape, batch.rewards.shape
        (torch.Size([2, 8, 3]), torch.Size([2, 8]))

        Only the transitions that ``where`` selects are stored (here the second task's episode
        ended after 2 steps, so its last 3 steps are not part of it):

        >>> alive = torch.tensor([[True] * 5, [True, True, False, False, False]])
        >>> buffer.add(torch.zeros(2, 5, 3), torch.zeros(2, 5, 1), torch.ones(2, 5),
        ...            torch.zeros(2, 5, 3), torch.zeros(2, 5, dtype=torch.bool), where=alive)
        >>> buffer.sizes, len(buffer)
        (tensor([10,  7]), 7)

        A resumed buffer samples what the original samples:

        >>> clone = ReplayBuffer(2, 100, obs_shape=3, act_shape=1)
        >>> clone.load_state_dict(buffer.state_dict())
        >>> bool((clone.sample(8).obs == buffer.sample(8).obs).all())
        True
    """

    _FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated")

    def __init__(
        self,
        tasks: int,
        capacity: int,
        *,
        obs_shape: int | tuple[int, ...],
        act_shape: int | tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> None:
        (self.tasks,) = _shape("tasks", tasks)
        (self.capacity,) = _shape("capacity", capacity)
        self.obs_shape = _shape("obs_shape", obs_shape)
        self.act_shape = _shape("act_shape", act_shape)
        if not dtype.is_floating_point:
            raise TypeError(f"ReplayBuffer: dtype must be floating point, got {dtype}")
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        lead = (self.tasks, self.capacity)
        kw = {"dtype": dtype, "device": self.device}
        self.storage: dict[str, Tensor] = {
            "obs": torch.zeros(*lead, *self.obs_shape, **kw),
            "actions": torch.zeros(*lead, *self.act_shape, **kw),
            "rewards": torch.zeros(*lead, **kw),
            "next_obs": torch.zeros(*lead, *self.obs_shape, **kw),
            "terminated": torch.zeros(*lead, dtype=torch.bool, device=self.device),
        }
        self._positions = torch.zeros(self.tasks, dtype=torch.long)  # per task, on the CPU
        self._sizes = torch.zeros(self.tasks, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        """The smallest number of transitions stored per task, $\\min_k n_k$ (at most ``capacity``)."""
        return int(self._sizes.min())

    @property
    def sizes(self) -> Tensor:
        """Transitions stored per task, $n_k \\le C$: a `(tasks,)` ``int64`` tensor (a copy)."""
        return self._sizes.clone()

    @property
    def positions(self) -> Tensor:
        """Ring position of each task (where its next transition goes): `(tasks,)` ``int64`` (a copy)."""
        return self._positions.clone()

    @property
    def size(self) -> int:
        """The size that every task shares; a ``ValueError`` if they differ (read ``sizes``).

        Assigning an int sets every task's size (e.g. ``buffer.position = buffer.size = 0`` empties it).
        """
        return self._common("size", self._sizes, "sizes")

    @size.setter
    def size(self, value: int) -> None:
        self._sizes = self._fill("size", value, high=self.capacity)

    @property
    def position(self) -> int:
        """The ring position that every task shares; a ``ValueError`` if they differ (read ``positions``).

        Assigning an int sets every task's position.
        """
        return self._common("position", self._positions, "positions")

    @position.setter
    def position(self, value: int) -> None:
        self._positions = self._fill("position", value, high=self.capacity - 1)

    def _common(self, name: str, values: Tensor, plural: str) -> int:
        if bool((values != values[0]).any()):
            raise ValueError(f"ReplayBuffer.{name}: the tasks differ ({plural} {values.tolist()}; add(..., where=...) "
                             f"filled them unevenly); read ReplayBuffer.{plural} for the per-task values")
        return int(values[0])

    def _fill(self, name: str, value: int, *, high: int) -> Tensor:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            raise ValueError(f"ReplayBuffer.{name} must be an int in [0, {high}], got {value!r}")
        return torch.full((self.tasks,), value, dtype=torch.long)

    def _field_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"obs": self.obs_shape, "actions": self.act_shape, "rewards": (),
                "next_obs": self.obs_shape, "terminated": ()}

    def add(self, obs: Any, actions: Any, rewards: Any, next_obs: Any, terminated: Any, *,
            where: Any = None) -> None:
        r"""Inserts $n$ transitions per task, for all tasks at once, each task at its ring position.

        Either every field has a step dimension, ``obs`` `(tasks, n, *obs_shape)`, ``actions``
        `(tasks, n, *act_shape)`, ``rewards`` and ``terminated`` `(tasks, n)`, or none has one
        (one transition per task: `(tasks, *obs_shape)`, ..., `(tasks,)`). ``where``, shaped like
        ``rewards``, selects the transitions to store: task $k$ stores its selected ones, in
        order, and its position and size advance by their number; the others are dropped (for
        instance the steps of a copy of the environment whose episode has ended).

        Args:
            obs: Observations $s$.
            actions: Actions $a$.
            rewards: Rewards $r$.
            next_obs: Next observations $s'$ (the final observation if the episode ended).
            terminated: ``bool``: whether $s'$ is terminal (not merely truncated).
            where: Optional ``bool`` mask, `(tasks,)` or `(tasks, n)` like ``rewards``: store only
                the transitions where it is true. ``None``: store all.

        Raises:
            TypeError: If an input is not a tensor or array, ``obs``, ``actions``, ``next_obs``
                or ``rewards`` is not floating point, or ``terminated`` or ``where`` is not ``bool``.
            ValueError: If a shape does not match (the message gives the expected shape), or a
                selected transition holds NaN or infinity (nothing is stored).

        Examples:
            >>> buffer = ReplayBuffer(1, 3, obs_shape=1, act_shape=1)
            >>> for step in range(4):  # one transition per call; the 4th overwrites the 1st
            ...     buffer.add(torch.full((1, 1), float(step)), torch.zeros(1, 1), torch.zeros(1),
            ...                torch.zeros(1, 1), torch.zeros(1, dtype=torch.bool))
            >>> buffer.storage["obs"][0, :, 0], buffer.position, len(buffer)
            (tensor([3., 1., 2.]), 1, 3)

            With ``where``, each task keeps its own selection and position:

            >>> buffer = ReplayBuffer(2, 4, obs_shape=1, act_shape=1)
            >>> steps = torch.arange(3.0).expand(2, 3)  # 3 steps offered to each of 2 tasks
            >>> buffer.add(steps[..., None], torch.zeros(2, 3, 1), steps, steps[..., None],
            ...            torch.zeros(2, 3, dtype=torch.bool), where=torch.tensor([[True, True, True],
            ...                                                                  [False, True, False]]))
            >>> buffer.storage["obs"][..., 0], buffer.positions, buffer.sizes
            (tensor([[0., 1., 2., 0.],
                    [1., 0., 0., 0.]]), tensor([3, 1]), tensor([3, 1]))
        """
        given = dict(zip(self._FIELDS, (obs, actions, rewards, next_obs, terminated), strict=True))
        tensors = {}
        for name, value in given.items():
            if not isinstance(value, Tensor):
                if not hasattr(value, "__array__"):
                    raise TypeError(f"ReplayBuffer.add: {name} must be a tensor or array, got {type(value).__name__}")
                value = torch.as_tensor(value)
            if name == "terminated":
                if value.dtype != torch.bool:
                    raise TypeError(f"ReplayBuffer.add: terminated must be bool, got {value.dtype} "
                                    "(convert with terminated.bool(); pass truncation separately, it is not stored)")
            elif not value.is_floating_point():
                raise TypeError(f"ReplayBuffer.add: {name} must be floating point, got {value.dtype}")
            tensors[name] = value
        one_step = tensors["obs"].dim() == 1 + len(self.obs_shape)
        n = 1 if one_step or tensors["obs"].dim() < 2 else tensors["obs"].shape[1]
        for name, value in tensors.items():
            field = self._field_shapes()[name]
            expected = (self.tasks, *field) if one_step else (self.tasks, n, *field)
            if tuple(value.shape) != expected:
                layout = "(tasks, *shape)" if one_step else "(tasks, n, *shape)"
                raise ValueError(
                    f"ReplayBuffer.add: {name} has shape {tuple(value.shape)}, expected {expected} "
                    f"({layout} with tasks={self.tasks}, obs_shape={self.obs_shape}, act_shape={self.act_shape}, "
                    f"as given by obs of shape {tuple(tensors['obs'].shape)})"
                )
            if one_step:
                tensors[name] = value.unsqueeze(1)
        selected = self._check_where(where, one_step, n)
        if n == 0:
            return
        for name in ("obs", "actions", "rewards", "next_obs"):  # a NaN stored now poisons every later update
            finite = torch.isfinite(tensors[name].reshape(self.tasks, n, -1)).all(-1).to("cpu")
            if not bool(finite[selected].all()):
                task, step = (int(i) for i in (selected & ~finite).nonzero()[0])
                raise ValueError(f"ReplayBuffer.add: {name} of task {task}" + ("" if one_step else f", step {step}")
                                 + " is NaN or infinite; nothing was stored. Check the environment or policy that "
                                 "produced it (or leave such transitions out with where=...)")
        counts = selected.sum(1)  # transitions stored per task
        order = selected.cumsum(1) - 1  # rank of each selected transition among its task's
        keep = selected & (order >= (counts - self.capacity).unsqueeze(1))  # of more than C, the last C survive
        slots = (self._positions.unsqueeze(1) + order) % self.capacity
        rows, steps = keep.nonzero(as_tuple=True)
        slots = slots[rows, steps].to(self.device)
        rows, steps = rows.to(self.device), steps.to(self.device)
        for name, value in tensors.items():
            store = self.storage[name]
            store[rows, slots] = value.to(device=self.device, dtype=store.dtype)[rows, steps]
        self._positions = (self._positions + counts) % self.capacity
        self._sizes = torch.clamp(self._sizes + counts, max=self.capacity)

    def _check_where(self, where: Any, one_step: bool, n: int) -> Tensor:
        """``where`` as a CPU `(tasks, n)` bool tensor (all true for ``None``), or a clear error."""
        if where is None:
            return torch.ones(self.tasks, n, dtype=torch.bool)
        if not isinstance(where, Tensor):
            if not hasattr(where, "__array__"):
                raise TypeError(f"ReplayBuffer.add: where must be a bool tensor or array, got {type(where).__name__}")
            where = torch.as_tensor(where)
        if where.dtype != torch.bool:
            raise TypeError(f"ReplayBuffer.add: where must be bool, got {where.dtype} (a mask of the transitions "
                            "to store, e.g. where=alive or where=mask.bool())")
        expected = (self.tasks,) if one_step else (self.tasks, n)
        if tuple(where.shape) != expected:
            layout = "(tasks,): one flag per task" if one_step else "(tasks, n): one flag per task and step"
            raise ValueError(f"ReplayBuffer.add: where has shape {tuple(where.shape)}, expected {expected} "
                             f"({layout}, the shape of rewards)")
        return where.to("cpu").reshape(self.tasks, n)

    def sample(self, batch_size: int, *, task_rows: slice | None = None, batch_tasks: int | None = None) -> Transitions:
        r"""Draws ``batch_size`` transitions per task, uniformly with replacement from its own.

        Task $k$'s indices are uniform over its $n_k$ stored transitions, drawn with the buffer's
        generator task after task (one ``torch.randint`` per run of tasks of equal size, so tasks
        that filled together draw exactly what one ``torch.randint(0, n, (tasks, batch_size))``
        draws). The result holds copies (later ``add`` calls do not change it).

        **One share of a larger batch** (a process of a distributed run that holds some tasks of
        a batch): with ``task_rows`` and ``batch_tasks`` this buffer's tasks are rows
        ``task_rows`` of a batch of ``batch_tasks`` tasks, and the generator advances as it would
        for the whole batch: each share draws exactly the indices that one buffer holding every
        task draws for its rows, provided all shares' generators start from the same state.
        This needs ``capacity < 2**28``.

        Args:
            batch_size: Transitions per task, $B$.
            task_rows: The rows of the whole batch that this buffer's tasks are (with
                ``batch_tasks``), a contiguous slice, e.g. ``metaops.distributed.task_slice``.
            batch_tasks: The number of tasks of the whole batch (with ``task_rows``).

        Returns:
            [metaops.rl.Transitions][] with fields `(tasks, B, ...)` on the buffer's device.

        Raises:
            ValueError: If a task holds no transition yet, ``batch_size`` is not a positive int, or
                ``task_rows`` and ``batch_tasks`` do not describe this buffer's share.

        Examples:
            >>> buffer = ReplayBuffer(3, 10, obs_shape=2, act_shape=2)
            >>> data = (torch.randn(3, 4, 2), torch.randn(3, 4, 2), torch.randn(3, 4),
            ...         torch.randn(3, 4, 2), torch.zeros(3, 4, dtype=torch.bool))
            >>> buffer.add(*data)
            >>> buffer.sample(5).terminated.shape
            torch.Size([3, 5])

            Rows 1 and 2 of the batch, held apart (same seed, same history), draw what a buffer
            of all 3 tasks draws for them:

            >>> whole, share = (ReplayBuffer(k, 10, obs_shape=2, act_shape=2) for k in (3, 2))
            >>> whole.add(*data); share.add(*(x[1:] for x in data))
            >>> torch.equal(share.sample(5, task_rows=slice(1, 3), batch_tasks=3).obs, whole.sample(5).obs[1:])
            True
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"ReplayBuffer.sample: batch_size must be a positive int, got {batch_size!r}")
        before, after = self._share(task_rows, batch_tasks)
        empty = (self._sizes == 0).nonzero().flatten().tolist()
        if len(empty) == self.tasks:
            raise ValueError("ReplayBuffer.sample: the buffer is empty; add transitions first")
        if empty:
            raise ValueError(f"ReplayBuffer.sample: task(s) {empty} hold no transitions yet (sizes "
                             f"{self._sizes.tolist()}): every task needs at least one before sampling; add(..., "
                             "where=...) stored none for them")
        if before:  # the earlier rows' indices: one 32-bit number each, whatever their sizes
            torch.randint(0, 2, (before * batch_size,), generator=self.generator)
        index = torch.empty(self.tasks, batch_size, dtype=torch.long)
        sizes = self._sizes.tolist()
        first = 0
        while first < self.tasks:  # one randint per run of equal sizes: one call when the tasks filled together
            last = first + 1
            while last < self.tasks and sizes[last] == sizes[first]:
                last += 1
            index[first:last] = torch.randint(0, sizes[first], (last - first, batch_size), generator=self.generator)
            first = last
        if after:
            torch.randint(0, 2, (after * batch_size,), generator=self.generator)
        index = index.to(self.device)
        rows = torch.arange(self.tasks, device=self.device).unsqueeze(1)
        return Transitions(**{name: self.storage[name][rows, index] for name in self._FIELDS})

    def _share(self, task_rows: slice | None, batch_tasks: int | None) -> tuple[int, int]:
        """The numbers of rows of the whole batch before and after this buffer's (0, 0 without a share)."""
        if task_rows is None and batch_tasks is None:
            return 0, 0
        if task_rows is None or batch_tasks is None:
            raise ValueError("ReplayBuffer.sample: task_rows and batch_tasks go together: pass both (this buffer "
                             "holds one share of a batch) or neither")
        if isinstance(batch_tasks, bool) or not isinstance(batch_tasks, int) or batch_tasks < 1:
            raise ValueError(f"ReplayBuffer.sample: batch_tasks must be a positive int, got {batch_tasks!r}")
        if not isinstance(task_rows, slice) or task_rows.step not in (None, 1):
            raise ValueError(f"ReplayBuffer.sample: task_rows must be a contiguous slice, got {task_rows!r}")
        start, stop, _ = task_rows.indices(batch_tasks)
        if ((task_rows.start or 0) != start or (task_rows.stop is not None and task_rows.stop != stop)
                or stop - start != self.tasks):
            raise ValueError(f"ReplayBuffer.sample: task_rows {task_rows} of a batch of {batch_tasks} tasks does "
                             f"not hold this buffer's {self.tasks} tasks")
        if batch_tasks != self.tasks and self.capacity >= _ONE_DRAW_BELOW:
            raise ValueError(f"ReplayBuffer.sample: a share of a batch (task_rows) needs capacity < 2**28, got "
                             f"{self.capacity} (larger indices cost the generator more, so the other rows' draws "
                             "could not be skipped)")
        return start, batch_tasks - stop

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: storage, per-task positions and sizes, generator state.

        The storage is returned as is (not copied); ``torch.save`` it, or clone it to keep a
        snapshot in memory. It loads with ``torch.load(..., weights_only=True)``.

        Examples:
            >>> state = ReplayBuffer(1, 4, obs_shape=1, act_shape=1).state_dict()
            >>> sorted(state)
            ['capacity', 'generator', 'positions', 'sizes', 'storage']
        """
        return {
            "storage": dict(self.storage),
            "positions": self._positions.clone(),
            "sizes": self._sizes.clone(),
            "capacity": self.capacity,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from ``state_dict`` (copying the storage into this buffer's tensors).

        States saved before per-task sizes existed, with one int ``position`` and ``size`` for
        all tasks instead of the tensors ``positions`` and ``sizes``, load too (every task gets
        that position and size).

        Raises:
            ValueError: If the state is missing a key, its storage shapes or dtypes differ from
                this buffer's (built with other ``tasks``, ``capacity`` or shapes), or a position or
                size does not fit the capacity.

        Examples:
            >>> a = ReplayBuffer(1, 4, obs_shape=1, act_shape=1, seed=1)
            >>> b = ReplayBuffer(1, 4, obs_shape=1, act_shape=1, seed=2)
            >>> b.load_state_dict(a.state_dict())
            >>> torch.equal(b.generator.get_state(), a.generator.get_state())
            True
        """
        per_task, common = {"positions", "sizes"} <= set(state), {"position", "size"} <= set(state)
        missing = {"storage", "capacity", "generator"} - set(state) | (set() if per_task or common
                                                                      else {"positions", "sizes"})
        if missing:
            raise ValueError(f"ReplayBuffer.load_state_dict: the state lacks {sorted(missing)}")
        if state["capacity"] != self.capacity:
            raise ValueError(f"ReplayBuffer.load_state_dict: the state has capacity {state['capacity']}, "
                             f"this buffer {self.capacity}")
        storage = state["storage"]
        if set(storage) != set(self._FIELDS):
            raise ValueError(f"ReplayBuffer.load_state_dict: storage has fields {sorted(storage)}, "
                             f"expected {sorted(self._FIELDS)}")
        for name in self._FIELDS:
            ours, theirs = self.storage[name], storage[name]
            if theirs.shape != ours.shape or theirs.dtype != ours.dtype:
                raise ValueError(
                    f"ReplayBuffer.load_state_dict: {name} is {tuple(theirs.shape)} {theirs.dtype} in the state but "
                    f"{tuple(ours.shape)} {ours.dtype} in this buffer (tasks, capacity, shapes and dtype must match)"
                )
        if per_task:
            positions, sizes = (self._per_task(state[key], key) for key in ("positions", "sizes"))
        else:  # the format before per-task sizes: one position and size for all tasks
            positions, sizes = (torch.full((self.tasks,), int(state[key]), dtype=torch.long)
                                for key in ("position", "size"))
        if not bool(((positions >= 0) & (positions < self.capacity) & (sizes >= 0) & (sizes <= self.capacity)).all()):
            raise ValueError(f"ReplayBuffer.load_state_dict: positions {positions.tolist()} and sizes "
                             f"{sizes.tolist()} do not fit capacity {self.capacity}")
        for name in self._FIELDS:
            self.storage[name].copy_(storage[name])
        self._positions, self._sizes = positions, sizes
        self.generator.set_state(state["generator"])

    def _per_task(self, value: Any, key: str) -> Tensor:
        value = torch.as_tensor(value)
        if value.dtype in (torch.bool, torch.uint8) or value.is_floating_point() or value.is_complex() \
                or tuple(value.shape) != (self.tasks,):
            raise ValueError(f"ReplayBuffer.load_state_dict: {key} must be an integer tensor of shape "
                             f"({self.tasks},) (one per task), got {value.dtype} of shape {tuple(value.shape)}")
        return value.to(device="cpu", dtype=torch.long).clone()
