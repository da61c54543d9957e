"""Score-function estimators for meta-gradients in RL: DiCE, Loaded DiCE, LVC and REINFORCE.

All estimators are pure functions on rollout tensors shaped ``(..., T)`` (time last), accept a
right-padded ``mask`` (one trajectory per row, ``1...1 0...0``), return one value per trajectory
to **maximise**, and work under ``torch.func.grad``, ``vmap`` and ``.backward()``.
"""

from metaops.estimators._dice import dice_objective, loaded_dice_objective, magic_box
from metaops.estimators._lvc import lvc_objective
from metaops.estimators._ppo import ppo_clip_objective, promp_objective
from metaops.estimators._surrogate import score_function_objective

__all__ = [
    "magic_box",
    "dice_objective",
    "loaded_dice_objective",
    "lvc_objective",
    "ppo_clip_objective",
    "promp_objective",
    "score_function_objective",
]
