"""DiffusionNFT and Flow-GRPO losses against hand computation on tiny tensors."""

import math

import pytest
import torch

from solrl.objectives import (
    group_advantages,
    grpo_kl,
    grpo_policy_loss,
    nft_kl,
    nft_loss,
    nft_optimality,
)


def test_nft_optimality_r():
    a = torch.tensor([-7.0, -5.0, -2.5, 0.0, 1.0, 5.0, 9.0])
    r = nft_optimality(a, 5.0)
    assert r.tolist() == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.6, 1.0, 1.0])
    with pytest.raises(ValueError, match="adv_clip_max"):
        nft_optimality(a, 0.0)


def _nft_inputs():
    # B = 2 samples of shape [1, 1, 2]: small enough to do by hand
    x0 = torch.tensor([[[[1.0, -1.0]]], [[[0.5, 0.0]]]])
    eps = torch.tensor([[[[0.0, 1.0]]], [[[-1.0, 2.0]]]])
    sigma = torch.tensor([0.5, 0.25])
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    v_theta = torch.tensor([[[[-1.0, 1.5]]], [[[-1.0, 2.0]]]])
    v_old = torch.tensor([[[[-0.5, 2.0]]], [[[-2.0, 1.0]]]])
    adv = torch.tensor([2.5, -10.0])
    return v_theta, v_old, x0, x_t, eps, sigma, adv


def test_nft_velocity_loss_by_hand():
    v_theta, v_old, x0, x_t, eps, sigma, adv = _nft_inputs()
    beta = 0.5
    loss, info = nft_loss(v_theta, v_old, x0, x_t, sigma, adv, beta=beta, adv_clip_max=5.0,
                          weighting="velocity")
    # sample 0: v = eps - x0 = [-1, 2]; r = 2.5/5/2 + 0.5 = 0.75
    #   v+ = 0.5 [-1, 1.5] + 0.5 [-0.5, 2] = [-0.75, 1.75];  |v+ - v|^2 mean = (0.0625 + 0.0625)/2
    #   v- = 1.5 [-0.5, 2] - 0.5 [-1, 1.5] = [-0.25, 2.25]; |v- - v|^2 mean = (0.5625 + 0.0625)/2
    l0 = 0.75 * 0.0625 + 0.25 * 0.3125
    # sample 1: v = [-1.5, 2]; r = clip(-10) -> 0
    #   v- = 1.5 [-2, 1] - 0.5 [-1, 2] = [-2.5, 0.5]; |v- - v|^2 mean = (1 + 2.25)/2
    l1 = 1.625
    assert loss.tolist() == pytest.approx([l0, l1], rel=1e-6)
    assert info["r"].tolist() == pytest.approx([0.75, 0.0])


def test_nft_adaptive_loss_by_hand():
    v_theta, v_old, x0, x_t, eps, sigma, adv = _nft_inputs()
    beta, amax = 0.5, 5.0
    loss, info = nft_loss(v_theta, v_old, x0, x_t, sigma, adv, beta=beta, adv_clip_max=amax)
    # x0-space errors e = x_t - sigma v -x0 = sigma (v_target - v); term = mean(e^2) / mean|e|
    def term(err):
        return sum(e * e for e in err) / len(err) / (sum(abs(e) for e in err) / len(err))

    # sample 0 (sigma 0.5): v+ - v = [0.25, -0.25] -> e+ = 0.5 * [-0.25, 0.25]
    #                        v- - v = [0.75, 0.25]  -> e- = 0.5 * [-0.75, -0.25]
    pos0, neg0 = term([-0.125, 0.125]), term([-0.375, -0.125])
    # sample 1 (sigma 0.25): v+ = [-1.5, 1.5], v+ - v = [0, -0.5]; v- - v = [-1, -1.5]
    pos1, neg1 = term([0.0, 0.125]), term([0.25, 0.375])
    expect = [amax / beta * (0.75 * pos0 + 0.25 * neg0), amax / beta * (0.0 * pos1 + 1.0 * neg1)]
    assert loss.tolist() == pytest.approx(expect, rel=1e-5)
    assert info["pos"].tolist() == pytest.approx([pos0, pos1], rel=1e-5)
    assert info["neg"].tolist() == pytest.approx([neg0, neg1], rel=1e-5)


def test_nft_gradient_pushes_toward_positive_for_good_samples():
    # at v_theta == v_old the gradient is 2 sigma beta (1 - 2r) (x0_pred - x0) / w per element
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=g)
    eps = torch.randn(3, 2, 4, 4, generator=g)
    sigma = torch.tensor([0.3, 0.6, 0.9])
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    v_old = torch.randn(3, 2, 4, 4, generator=g)
    v_theta = v_old.clone().requires_grad_(True)
    adv = torch.tensor([5.0, 0.0, -5.0])
    loss, _ = nft_loss(v_theta, v_old, x0, x_t, sigma, adv, beta=1.0, adv_clip_max=5.0,
                       weighting="velocity")
    loss.sum().backward()
    v = eps - x0
    # r = 1: grad = 2 (v_theta - v) / n ; r = 0.5: grad = 0 ; r = 0: grad = -2 (v_theta - v) / n
    n = v[0].numel()
    assert torch.allclose(v_theta.grad[0], 2 * (v_old[0] - v[0]) / n, atol=1e-6)
    assert torch.allclose(v_theta.grad[1], torch.zeros_like(v[1]), atol=1e-6)
    assert torch.allclose(v_theta.grad[2], -2 * (v_old[2] - v[2]) / n, atol=1e-6)


def test_nft_kl_by_hand():
    a = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])
    b = torch.tensor([[[[0.0, 0.0]]], [[[3.0, -1.0]]]])
    assert nft_kl(a, b).tolist() == pytest.approx([2.5, 5.0])


def test_nft_bad_args():
    v_theta, v_old, x0, x_t, eps, sigma, adv = _nft_inputs()
    with pytest.raises(ValueError, match="beta"):
        nft_loss(v_theta, v_old, x0, x_t, sigma, adv, beta=0.0)
    with pytest.raises(ValueError, match="weighting"):
        nft_loss(v_theta, v_old, x0, x_t, sigma, adv, weighting="l1")


def test_grpo_policy_loss_by_hand():
    logp_old = torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0])
    logp = torch.tensor([0.2, -0.2, 0.2, -0.2, -1.0])
    adv = torch.tensor([1.0, 1.0, -2.0, -2.0, 7.0])
    eps = 0.1
    loss, info = grpo_policy_loss(logp, logp_old, adv, clip_range=eps, adv_clip_max=5.0)
    r_hi, r_lo = math.exp(0.2), math.exp(-0.2)
    expect = [
        max(-1 * r_hi, -1 * 1.1),  # A > 0, ratio above the range: the clipped term wins
        max(-1 * r_lo, -1 * 0.9),  # A > 0, ratio below: unclipped (pessimistic)
        max(2 * r_hi, 2 * 1.1),  # A < 0, ratio above: unclipped
        max(2 * r_lo, 2 * 0.9),  # A < 0, ratio below: clipped
        -5.0,  # A clipped to 5, ratio 1
    ]
    assert loss.tolist() == pytest.approx(expect, rel=1e-6)
    assert info["ratio"].tolist() == pytest.approx([r_hi, r_lo, r_hi, r_lo, 1.0], rel=1e-6)
    assert info["clipped"].tolist() == [True, False, False, True, False]


def test_grpo_gradient_vanishes_outside_the_clip_range():
    logp = torch.tensor([0.3, 0.3], requires_grad=True)
    loss, _ = grpo_policy_loss(logp, torch.zeros(2), torch.tensor([1.0, -1.0]), clip_range=0.1)
    loss.sum().backward()
    # A > 0 with ratio > 1 + eps: constant clipped branch, no gradient; A < 0: -A r' = r
    assert logp.grad.tolist() == pytest.approx([0.0, math.exp(0.3)], rel=1e-6)


def test_grpo_kl_by_hand():
    mu = torch.tensor([[[[1.0, 3.0]]]])
    mu_ref = torch.tensor([[[[0.0, 1.0]]]])
    # mean of squares = (1 + 4) / 2 = 2.5; / (2 * 0.5^2)
    assert grpo_kl(mu, mu_ref, torch.tensor([0.5])).tolist() == pytest.approx([5.0])


def test_group_advantages():
    r = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    group = group_advantages(r, "group", eps=0.0)
    std0 = math.sqrt(2 / 3)
    assert group[0].tolist() == pytest.approx([-1 / std0, 0.0, 1 / std0], rel=1e-6)
    glob = group_advantages(r, "global", eps=1e-4)
    gstd = float(r.double().std(unbiased=False))
    assert glob[1].tolist() == pytest.approx([-2 / (gstd + 1e-4), -2 / (gstd + 1e-4), 4 / (gstd + 1e-4)])
    assert group_advantages(r, "global", global_std=1.0, eps=0.0)[0].tolist() == pytest.approx([-1, 0, 1])
    # a constant group has zero advantages (no NaN)
    assert group_advantages(torch.ones(1, 4), "group").abs().max() == 0
    with pytest.raises(ValueError, match=r"\[G, K\]"):
        group_advantages(torch.ones(4))
