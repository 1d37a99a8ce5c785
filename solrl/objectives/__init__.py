"""Training objectives on regenerated rollouts: DiffusionNFT (default) and Flow-GRPO.

Each loss returns per-sample values [B] so the driver can drop non-finite samples and weight
micro-batches; `group_advantages` turns per-prompt rewards into advantages for both.
"""

from .advantages import group_advantages
from .grpo import grpo_kl, grpo_policy_loss
from .nft import nft_kl, nft_loss, nft_optimality

__all__ = [
    "group_advantages",
    "grpo_kl",
    "grpo_policy_loss",
    "nft_kl",
    "nft_loss",
    "nft_optimality",
]
