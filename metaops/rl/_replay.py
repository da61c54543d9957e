"""A per-task replay buffer of transitions for off-policy learners (SAC).

The buffer holds one ring buffer per task in preallocated tensors of shape
``(tasks, capacity, ...)``: every call to ``add`` inserts a batch of transitions for all tasks at
once, and ``sample`` draws one minibatch per task, shaped ``(tasks, batch_size, ...)``, ready for
``torch.func.vmap`` over the task dimension. Sampling uses the buffer's own ``torch.Generator``,
so runs are reproducible, and ``state_dict`` captures everything (storage, position, size and
generator state) for an exact resume.
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


def _shape(name: str, value: int | tuple[int, ...]) -> tuple[int, ...]:
    shape = (value,) if isinstance(value, int) else tuple(value)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise ValueError(f"ReplayBuffer: {name} must be a positive int or a tuple of positive ints, got {value!r}")
    return shape


class ReplayBuffer:
    r"""Per-task ring buffers of transitions $(s, a, r, s', d)$ in preallocated tensors.

    Storage is ``(tasks, capacity, ...)`` per field. ``add`` writes a batch of $n$ transitions
    for **all tasks at once** at positions $(p, p+1, \dots, p+n-1) \bmod C$, overwriting the
    oldest ones once the buffer is full (when $n > C$ only the last $C$ are kept). ``sample``
    draws, for each task independently, ``batch_size`` indices uniformly with replacement from
    the transitions stored so far, with the buffer's ``torch.Generator`` (seeded by ``seed``): the
    same seed and the same history give the same indices. ``state_dict`` / ``load_state_dict``
    resume exactly: storage, position, size and generator state.

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
        self.position = 0
        self.size = 0
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        """Transitions stored per task (at most ``capacity``)."""
        return self.size

    def _field_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"obs": self.obs_shape, "actions": self.act_shape, "rewards": (),
                "next_obs": self.obs_shape, "terminated": ()}

    def add(self, obs: Any, actions: Any, rewards: Any, next_obs: Any, terminated: Any) -> None:
        r"""Inserts $n$ transitions per task, for all tasks at once, at the ring position.

        Either every field has a step dimension, ``obs`` `(tasks, n, *obs_shape)`, ``actions``
        `(tasks, n, *act_shape)`, ``rewards`` and ``terminated`` `(tasks, n)`, or none has one
        (one transition per task: `(tasks, *obs_shape)`, ..., `(tasks,)`).

        Args:
            obs: Observations $s$.
            actions: Actions $a$.
            rewards: Rewards $r$.
            next_obs: Next observations $s'$ (the final observation if the episode ended).
            terminated: ``bool``: whether $s'$ is terminal (not merely truncated).

        Raises:
            TypeError: If an input is not a tensor or array, ``obs``, ``actions``, ``next_obs``
                or ``rewards`` is not floating point, or ``terminated`` is not ``bool``.
            ValueError: If a shape does not match (the message gives the expected shape).

        Examples:
            >>> buffer = ReplayBuffer(1, 3, obs_shape=1, act_shape=1)
            >>> for step in range(4):  # one transition per call; the 4th overwrites the 1st
            ...     buffer.add(torch.full((1, 1), float(step)), torch.zeros(1, 1), torch.zeros(1),
            ...                torch.zeros(1, 1), torch.zeros(1, dtype=torch.bool))
            >>> buffer.storage["obs"][0, :, 0], buffer.position, len(buffer)
            (tensor([3., 1., 2.]), 1, 3)
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
        if n == 0:
            return
        keep = min(n, self.capacity)  # with n > capacity only the last `capacity` survive
        index = (self.position + n - keep + torch.arange(keep)) % self.capacity
        index = index.to(self.device)
        for name, value in tensors.items():
            store = self.storage[name]
            store[:, index] = value[:, n - keep:].to(device=self.device, dtype=store.dtype)
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> Transitions:
        r"""Draws ``batch_size`` transitions per task, uniformly with replacement.

        Indices come from the buffer's generator, shape `(tasks, batch_size)`, each task drawing
        its own. The result holds copies (later ``add`` calls do not change it).

        Args:
            batch_size: Transitions per task, $B$.

        Returns:
            [metaops.rl.Transitions][] with fields `(tasks, B, ...)` on the buffer's device.

        Raises:
            ValueError: If the buffer is empty or ``batch_size`` is not a positive int.

        Examples:
            >>> buffer = ReplayBuffer(3, 10, obs_shape=2, act_shape=2)
            >>> buffer.add(torch.randn(3, 4, 2), torch.randn(3, 4, 2), torch.randn(3, 4),
            ...            torch.randn(3, 4, 2), torch.zeros(3, 4, dtype=torch.bool))
            >>> buffer.sample(5).terminated.shape
            torch.Size([3, 5])
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"ReplayBuffer.sample: batch_size must be a positive int, got {batch_size!r}")
        if self.size == 0:
            raise ValueError("ReplayBuffer.sample: the buffer is empty; add transitions first")
        index = torch.randint(0, self.size, (self.tasks, batch_size), generator=self.generator).to(self.device)
        rows = torch.arange(self.tasks, device=self.device).unsqueeze(1)
        return Transitions(**{name: self.storage[name][rows, index] for name in self._FIELDS})

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: storage, position, size, generator state.

        The storage is returned as is (not copied); ``torch.save`` it, or clone it to keep a
        snapshot in memory. It loads with ``torch.load(..., weights_only=True)``.

        Examples:
            >>> state = ReplayBuffer(1, 4, obs_shape=1, act_shape=1).state_dict()
            >>> sorted(state)
            ['capacity', 'generator', 'position', 'size', 'storage']
        """
        return {
            "storage": dict(self.storage),
            "position": self.position,
            "size": self.size,
            "capacity": self.capacity,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from ``state_dict`` (copying the storage into this buffer's tensors).

        Raises:
            ValueError: If the state is missing a key or its storage shapes or dtypes differ from
                this buffer's (built with other ``tasks``, ``capacity`` or shapes).

        Examples:
            >>> a = ReplayBuffer(1, 4, obs_shape=1, act_shape=1, seed=1)
            >>> b = ReplayBuffer(1, 4, obs_shape=1, act_shape=1, seed=2)
            >>> b.load_state_dict(a.state_dict())
            >>> torch.equal(b.generator.get_state(), a.generator.get_state())
            True
        """
        missing = {"storage", "position", "size", "capacity", "generator"} - set(state)
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
        position, size = int(state["position"]), int(state["size"])
        if not (0 <= position < self.capacity and 0 <= size <= self.capacity):
            raise ValueError(f"ReplayBuffer.load_state_dict: position {position} and size {size} do not fit "
                             f"capacity {self.capacity}")
        for name in self._FIELDS:
            self.storage[name].copy_(storage[name])
        self.position, self.size = position, size
        self.generator.set_state(state["generator"])
