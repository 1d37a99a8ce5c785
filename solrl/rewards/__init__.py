"""Rewards: images [B, 3, H, W] in [0, 1] + prompts -> float32 [B], higher is better.

    from solrl.rewards import build_reward
    reward = build_reward("geneval")              # the toy world's detector (default)
    r = reward(images, prompts)                   # [B]
    skills = reward.score_skills(images, prompts) # {"count", "colour", "shape", "position", ...}
"""

from __future__ import annotations

from .base import Reward
from .geneval import SKILLS, GenEvalResult, GenEvalReward
from .simple import AestheticReward, JpegCompressibilityReward

REWARDS: dict[str, type] = {
    "geneval": GenEvalReward,
    "jpeg_compressibility": JpegCompressibilityReward,
    "aesthetic": AestheticReward,
}
DEFAULT_REWARD = "geneval"


def build_reward(name: str = DEFAULT_REWARD, **kwargs) -> Reward:
    """A reward by name (REWARDS' keys); kwargs go to its constructor."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid: {sorted(REWARDS)}")
    return REWARDS[name](**kwargs)


__all__ = [
    "DEFAULT_REWARD",
    "REWARDS",
    "SKILLS",
    "AestheticReward",
    "GenEvalResult",
    "GenEvalReward",
    "JpegCompressibilityReward",
    "Reward",
    "build_reward",
]
