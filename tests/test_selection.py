"""Selection strategies (solrl.selection) and per-prompt selection (solrl.rollout)."""

import itertools

import pytest
import torch

from solrl.rollout import select_per_prompt
from solrl.selection import STRATEGIES, select

REWARDS = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.95, 0.0, 0.6])


def test_best_worst_takes_half_best_half_worst():
    idx = select(REWARDS, 4, "best_worst")
    assert idx.tolist() == [1, 2, 5, 6]  # best 0.95, 0.9; worst 0.0, 0.1; ascending indices


def test_best_worst_odd_k_gives_extra_worst():
    # official split: K // 2 best, K - K // 2 worst
    idx = select(REWARDS, 3, "best_worst")
    assert sorted(idx.tolist()) == [2, 5, 6]  # best 0.95; worst 0.0, 0.1


def test_top():
    assert select(REWARDS, 3, "top").tolist() == [1, 3, 5]


def test_ties_are_broken_by_index():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
    assert select(r, 2, "top").tolist() == [0, 1]
    assert select(r, 2, "best_worst").tolist() == [0, 4]


def test_random_is_reproducible_and_distinct():
    a = select(REWARDS, 5, "random", torch.Generator().manual_seed(3))
    b = select(REWARDS, 5, "random", torch.Generator().manual_seed(3))
    c = select(REWARDS, 5, "random", torch.Generator().manual_seed(4))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 5
    assert a.tolist() != c.tolist()
    with pytest.raises(ValueError, match="generator"):
        select(REWARDS, 2, "random")


@pytest.mark.parametrize("k", [2, 3, 5])
def test_max_variance_is_the_brute_force_optimum(k):
    g = torch.Generator().manual_seed(k)
    r = torch.randn(9, generator=g, dtype=torch.float64)
    best = max(itertools.combinations(range(9), k), key=lambda s: float(r[list(s)].var(unbiased=False)))
    got = select(r, k, "max_variance")
    assert got.tolist() == sorted(best)


def test_stratified_spans_the_range():
    # descending: 0.95 (5), 0.9 (1), 0.7 (3), 0.6 (7), 0.5 (0), 0.3 (4), 0.1 (2), 0.0 (6);
    # K = 4 takes ranks round(i * 7 / 3) = 0, 2, 5, 7
    assert select(REWARDS, 4, "stratified").tolist() == [3, 4, 5, 6]
    assert select(REWARDS, 2, "stratified").tolist() == [5, 6]  # best and worst
    assert select(REWARDS, 1, "stratified").tolist() == [7]  # rank (N - 1) // 2 = 3


def test_max_variance_prefers_extremes_on_skewed_rewards():
    r = torch.tensor([0.0, 0.01, 0.02, 0.03, 0.5, 1.0])
    assert select(r, 2, "max_variance").tolist() == [0, 5]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_k_distinct_sorted(strategy):
    g = torch.Generator().manual_seed(0)
    r = torch.rand(24, generator=g)
    idx = select(r, 8, strategy, torch.Generator().manual_seed(1))
    assert idx.dtype == torch.int64 and idx.shape == (8,)
    assert idx.tolist() == sorted(set(idx.tolist()))
    assert select(r, 24, strategy, torch.Generator().manual_seed(1)).tolist() == list(range(24))


def test_bad_inputs():
    with pytest.raises(ValueError, match="cannot select 9 of 8"):
        select(REWARDS, 9, "top")
    with pytest.raises(ValueError, match="finite"):
        select(torch.tensor([0.0, float("nan"), 1.0]), 2, "top")
    with pytest.raises(ValueError, match="unknown selection strategy 'best'"):
        select(REWARDS, 2, "best")
    with pytest.raises(ValueError, match="1-D"):
        select(REWARDS.view(2, 4), 2, "top")


def test_select_per_prompt_skips_non_finite_groups():
    r = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.3, float("inf"), 0.1, 0.0], [1.0, 0.0, 0.5, 0.4]])
    chosen, valid = select_per_prompt(r, 2, "best_worst")
    assert valid.tolist() == [True, False, True]
    assert chosen.tolist() == [[0, 1], [0, 1]]
