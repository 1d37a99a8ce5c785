"""The toy tokenizer: a closed word-level vocabulary (the grammar's words), fixed length.

    ids = ToyTokenizer()(["two red circles left of a blue square"])   # [1, 16] int64
    # [BOS] two red circles left of a blue square [EOS] [PAD] ...

Words outside the vocabulary become [UNK]; prompts longer than max_length are truncated
(the longest grammar prompt is 9 words, 11 tokens).
"""

from __future__ import annotations

import functools

import torch

from . import world

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


@functools.lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """Special tokens, then every grammar word in sorted order. Stored in the model's
    config.json: a checkpoint whose vocabulary differs is refused at load."""
    words = set(world._WORD_COUNTS) | set(world.COLOUR_NAMES) | {"and"}
    words |= set(world.SHAPES) | {s + "s" for s in world.SHAPES}
    for rel in world.RELATIONS:
        words |= set(rel.split())
    return SPECIAL_TOKENS + tuple(sorted(words))


class ToyTokenizer:
    """prompts -> token ids [B, max_length] int64 (PAD = 0)."""

    def __init__(self, max_length: int = 16):
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 (BOS, a word, EOS), got {max_length}")
        self.max_length = max_length
        self.vocab = vocabulary()
        self.token_to_id = {t: i for i, t in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (
            self.token_to_id[t] for t in SPECIAL_TOKENS
        )

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, prompt: str) -> list[int]:
        """One prompt -> max_length ids: BOS, words (UNK if unknown), EOS, PAD..."""
        words = world.normalize_prompt(prompt)[: self.max_length - 2]
        ids = [self.bos_id, *(self.token_to_id.get(w, self.unk_id) for w in words), self.eos_id]
        return ids + [self.pad_id] * (self.max_length - len(ids))

    def __call__(self, prompts: list[str], device=None) -> torch.Tensor:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, got one str; wrap it in a list")
        return torch.tensor([self.encode(p) for p in prompts], dtype=torch.int64, device=device)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """ids of one prompt -> its words (special tokens dropped)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return " ".join(self.vocab[i] for i in ids if self.vocab[i] not in SPECIAL_TOKENS)


@functools.lru_cache(maxsize=4)
def table_token_ids(max_length: int = 16) -> torch.Tensor:
    """Token ids of every prompt_table() row: [N, max_length] int64 (CPU), for batched lookup
    in pretraining."""
    return ToyTokenizer(max_length)(list(world.prompt_table().prompts))
