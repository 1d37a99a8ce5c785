"""Samplers: Flow-GRPO SDE step and log-prob against closed forms; ODE/SDE samplers."""

import math

import pytest
import scipy.stats
import torch

from solrl import sampling


class LinearVelocity:
    """A DiffusionModel whose velocity is v = a * x + b (per channel): known trajectories."""

    latent_shape = (2, 3, 3)

    def __init__(self, a=0.3, b=-0.2):
        self.a, self.b = a, b
        self.transformer = torch.nn.Linear(1, 1)

    def velocity(self, latents, sigma, cond, transformer=None):
        assert sigma.shape == (latents.shape[0],)
        return self.a * latents + self.b + 0 * cond["c"].view(-1, 1, 1, 1)

    def encode_prompts(self, prompts):
        return {"c": torch.zeros(len(prompts))}

    def decode(self, x):
        return x


def _inputs(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 2, 3, 3, generator=g, dtype=torch.float64)
    v = torch.randn(b, 2, 3, 3, generator=g, dtype=torch.float64)
    return x, v, g


def test_sigma_t_formula_and_sigma_one_substitute():
    sigma = torch.tensor([1.0, 0.9, 0.5, 0.1])
    st = sampling.sde_sigma_t(sigma, noise_level=0.7, sigma_max=0.95)
    expect = [0.7 * math.sqrt(1.0 / (1 - 0.95))] + [0.7 * math.sqrt(s / (1 - s)) for s in (0.9, 0.5, 0.1)]
    assert torch.allclose(st.double(), torch.tensor(expect, dtype=torch.float64), rtol=1e-6)


def test_sde_step_mean_matches_design_formula():
    x, v, _ = _inputs()
    sigma = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2])
    sigma_next = sigma - torch.tensor([0.2, 0.1, 0.3, 0.05, 0.2])
    a, smax = 0.7, 0.9
    mu, std = sampling.sde_step_mean(x, v, sigma, sigma_next, a, smax)
    for i in range(5):
        s, sn = float(sigma[i]), float(sigma_next[i])
        st = a * math.sqrt(s / (1 - (smax if s == 1 else s)))
        dt = sn - s
        mu_i = x[i] + (v[i] + st**2 / (2 * s) * (x[i] + (1 - s) * v[i])) * dt
        assert torch.allclose(mu[i].double(), mu_i, atol=1e-5, rtol=1e-5)
        assert math.isclose(float(std[i]), st * math.sqrt(-dt), rel_tol=1e-6)


def test_sde_log_prob_equals_closed_form_gaussian():
    x, v, g = _inputs(b=4, seed=1)
    sigma = torch.tensor([0.9, 0.7, 0.5, 0.3])
    sigma_next = sigma - 0.1
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    x_next, logp = sampling.sde_step(x, v, sigma, sigma_next, noise, 0.7, 0.95)
    mu, std = sampling.sde_step_mean(x, v, sigma, sigma_next, 0.7, 0.95)
    for i in range(4):
        ref = scipy.stats.norm.logpdf(x_next[i].double().numpy(), loc=mu[i].double().numpy(),
                                      scale=float(std[i])).mean()
        assert math.isclose(float(logp[i]), float(ref), rel_tol=1e-5, abs_tol=1e-5)
    # x_next - mu is exactly std * noise
    assert torch.allclose((x_next - mu).double(), std.double().view(-1, 1, 1, 1) * noise, atol=1e-5)


def test_sde_log_prob_is_fp32_and_differentiable():
    x, v, g = _inputs(b=3, seed=2)
    v = v.float().requires_grad_(True)
    sigma = torch.tensor([0.8, 0.5, 0.2])
    mu, std = sampling.sde_step_mean(x.float(), v, sigma, sigma - 0.1, 0.7, 0.9)
    lp = sampling.sde_log_prob(mu.detach() + 0.01, mu, std)
    assert lp.dtype == torch.float32 and lp.shape == (3,)
    lp.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all()


def test_ode_sample_solves_linear_ode():
    # dx/dsigma = a x + b with Euler steps: x_{k+1} = x_k + h_k (a x_k + b), h_k = s_{k+1} - s_k
    m = LinearVelocity()
    noise = torch.randn(2, *m.latent_shape)
    cond = m.encode_prompts(["p", "q"])
    out = sampling.ode_sample(m, noise, cond, 4, shift=2.0)
    sig = sampling.sigma_schedule(4, 2.0)
    x = noise.double()
    for k in range(4):
        x = x + float(sig[k + 1] - sig[k]) * (m.a * x + m.b)
    assert torch.allclose(out.double(), x, atol=1e-5)


def test_sde_sample_trajectory_and_log_probs():
    m = LinearVelocity()
    b, steps = 3, 5
    noise = torch.randn(b, *m.latent_shape)
    eps = torch.randn(steps, b, *m.latent_shape)
    x0, traj, logp = sampling.sde_sample(m, noise, m.encode_prompts(["a"] * b), steps,
                                         lambda k: eps[k], noise_level=0.7, shift=1.0)
    sig = sampling.sigma_schedule(steps)
    assert traj.shape == (b, steps + 1, *m.latent_shape) and logp.shape == (b, steps)
    assert torch.equal(traj[:, 0], noise) and torch.equal(traj[:, -1], x0)
    for k in range(steps - 1):  # every stochastic transition is reproducible from its inputs
        s, sn = sig[k].expand(b), sig[k + 1].expand(b)
        v = m.velocity(traj[:, k], s, {"c": torch.zeros(b)})
        x_next, lp = sampling.sde_step(traj[:, k], v, s, sn, eps[k], 0.7, float(sig[1]))
        assert torch.allclose(x_next, traj[:, k + 1], atol=1e-6)
        assert torch.allclose(lp, logp[:, k], atol=1e-6)
    assert torch.equal(logp[:, -1], torch.zeros(b))  # the last step is deterministic


def test_sigma_schedule_signature_unchanged():
    s = sampling.sigma_schedule(10, shift=3.0)
    assert s.shape == (11,) and s[0] == 1 and s[-1] == 0
    assert bool((s[1:] < s[:-1]).all())
    with pytest.raises(ValueError, match="num_steps"):
        sampling.sigma_schedule(0)
