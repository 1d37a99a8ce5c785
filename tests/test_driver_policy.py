"""Policy: LoRA / full, old-policy EMA, reference, rollout-copy refresh, checkpoint state."""

import copy

import pytest
import torch

from solrl.policy import Policy, old_decay

toy = pytest.importorskip("solrl.toy")

TINY = dict(image_size=16, patch_size=4, num_layers=1, num_attention_heads=2, attention_head_dim=16,
            text_dim=32, pooled_dim=32, text_layers=1, max_tokens=16)  # fmt: skip


@pytest.fixture
def model():
    torch.manual_seed(0)
    return toy.ToyT2I(toy.ToyModelConfig(**TINY)).eval()


def _inputs(model, b=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, *model.latent_shape, generator=g)
    sigma = torch.tensor([0.9, 0.5, 0.2])[:b]
    cond = model.encode_prompts(["one red circle", "two blue squares", "a green triangle"][:b])
    return x, sigma, cond


def _perturb(params, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_old_decay_schedule():
    assert old_decay(0, 0.001, 0.5) == 0.0
    assert old_decay(100, 0.001, 0.5) == pytest.approx(0.1)
    assert old_decay(10**6, 0.001, 0.5) == 0.5


def test_lora_policy_old_reference_and_rollout_copy(model):
    base = copy.deepcopy(model.transformer)
    x, sigma, cond = _inputs(model)
    with torch.no_grad():
        v_base = model.velocity(x, sigma, cond, transformer=base)
    pol = Policy(model, "lora", lora_rank=4, lora_alpha=8, rollout_dtype=torch.float32,
                 mixed_precision="no", init_seed=5)
    cur = pol.trainable_parameters()
    assert cur and all(p.requires_grad for p in cur)
    assert all(".default." in n for n, p in pol.net.named_parameters() if p.requires_grad)
    # LoRA B starts at zero: every policy equals the base model
    for fn in (pol.velocity, pol.velocity_old, pol.velocity_ref):
        assert torch.allclose(fn(model, x, sigma, cond), v_base, atol=1e-5)
    # move the current policy, then the old one halfway (decay 0.5)
    _perturb(cur, 2)
    pol.update_old(0.5)
    v_cur = pol.velocity(model, x, sigma, cond)
    v_old = pol.velocity_old(model, x, sigma, cond)
    assert not torch.allclose(v_cur, v_base, atol=1e-4) and not torch.allclose(v_old, v_cur, atol=1e-4)
    # the adapter switch restored which parameters train
    assert all(p.requires_grad for p in cur) and not any(p.requires_grad for p in pol._old_parameters())
    # reference = base model whatever the adapters hold
    assert torch.allclose(pol.velocity_ref(model, x, sigma, cond), v_base, atol=1e-5)
    # the rollout copy is peft-free and holds the merged *old* policy after a refresh
    assert not any("lora" in n for n, _ in pol.rollout.named_parameters())
    with torch.no_grad():
        v_roll_stale = model.velocity(x, sigma, cond, transformer=pol.rollout)
    pol.refresh_rollout()
    with torch.no_grad():
        v_roll = model.velocity(x, sigma, cond, transformer=pol.rollout)
    assert torch.allclose(v_roll_stale, v_base, atol=1e-5)
    assert torch.allclose(v_roll, v_old, atol=1e-4), (v_roll - v_old).abs().max()
    # gradients reach exactly the trainable LoRA parameters
    pol.velocity(model, x, sigma, cond).square().mean().backward()
    assert all(p.grad is not None for p in cur)
    assert all(p.grad is None for p in pol._old_parameters())


def test_old_ema_math(model):
    pol = Policy(model, "lora", lora_rank=4, lora_alpha=8, rollout_dtype=torch.float32,
                 mixed_precision="no")
    cur, old = pol.trainable_parameters(), pol._old_parameters()
    _perturb(cur, 3)
    before = [o.detach().clone() for o in old]
    pol.update_old(0.3)
    for o, b, c in zip(old, before, cur):
        assert torch.allclose(o, 0.3 * b + 0.7 * c.detach(), atol=1e-7)


def test_full_finetune_policy(model):
    x, sigma, cond = _inputs(model)
    with torch.no_grad():
        v_base = model.velocity(x, sigma, cond)
    pol = Policy(model, "full", need_reference=True, rollout_dtype=torch.float32, mixed_precision="no")
    cur = pol.trainable_parameters()
    assert sum(p.numel() for p in cur) == sum(p.numel() for p in model.transformer.parameters())
    _perturb(cur, 4)
    pol.update_old(0.25)
    pol.refresh_rollout()
    v_old = pol.velocity_old(model, x, sigma, cond)
    with torch.no_grad():
        v_roll = model.velocity(x, sigma, cond, transformer=pol.rollout)
    assert torch.allclose(v_roll, v_old, atol=1e-5)
    assert torch.allclose(pol.velocity_ref(model, x, sigma, cond), v_base, atol=1e-5)
    assert not torch.allclose(pol.velocity(model, x, sigma, cond), v_base, atol=1e-4)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_state_dict_round_trip(mode):
    torch.manual_seed(0)
    m1, m2 = (toy.ToyT2I(toy.ToyModelConfig(**TINY)).eval() for _ in range(2))
    m2.load_state_dict(m1.state_dict())
    p1 = Policy(m1, mode, lora_rank=4, lora_alpha=8, rollout_dtype=torch.float32, mixed_precision="no")
    p2 = Policy(m2, mode, lora_rank=4, lora_alpha=8, rollout_dtype=torch.float32, mixed_precision="no",
                init_seed=99)
    _perturb(p1.trainable_parameters(), 7)
    p1.update_old(0.5)
    p1.refresh_rollout()
    p2.load_state_dict(p1.state_dict())
    x, sigma, cond = _inputs(m1)
    for fn in ("velocity", "velocity_old"):
        assert torch.equal(getattr(p1, fn)(m1, x, sigma, cond), getattr(p2, fn)(m2, x, sigma, cond))
    with torch.no_grad():
        assert torch.equal(m1.velocity(x, sigma, cond, transformer=p1.rollout),
                           m2.velocity(x, sigma, cond, transformer=p2.rollout))
    bad = {k: v for k, v in p1.state_dict().items() if not k.startswith("old.")}
    with pytest.raises(ValueError, match="checkpoint holds"):
        p2.load_state_dict(bad)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_gradient_checkpointing_gives_the_same_gradients(finetune):
    """train.gradient_checkpointing recomputes each block in backward: same velocity and the
    same gradients as keeping the activations; only the trained module checkpoints (the rollout
    copy, old policy and reference run without grad and keep the plain forward)."""
    grads, outs = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        m = toy.ToyT2I(toy.ToyModelConfig(**TINY)).eval()
        pol = Policy(m, finetune, lora_rank=4, lora_alpha=8, rollout_dtype=torch.float32,
                     mixed_precision="no", init_seed=5, gradient_checkpointing=checkpointing)
        _perturb(pol.trainable_parameters(), 2)  # LoRA B starts at zero: give it a gradient path
        x, sigma, cond = _inputs(m)
        v = pol.velocity(m, x, sigma, cond)
        v.square().mean().backward()
        outs.append(v.detach())
        grads.append([p.grad.clone() for p in pol.trainable_parameters()])
        assert m.transformer.gradient_checkpointing == checkpointing
        assert not pol.rollout.gradient_checkpointing
        if finetune == "full":
            assert not pol._old.gradient_checkpointing
    assert torch.equal(outs[0], outs[1])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a - b).abs().max()


def test_gradient_checkpointing_needs_a_model_that_supports_it():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q = torch.nn.Linear(4, 4)

    class Model:
        transformer = Plain()

    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        Policy(Model(), "full", rollout_dtype=torch.float32, mixed_precision="no",
               gradient_checkpointing=True, need_reference=False)


def _bshd_qkv(b=2, s=24, h=3, d=16, seed=0):
    """q, k, v as diffusers passes them: (B, H, S, D) views of (B, S, H, D) tensors."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, s, h, d, generator=g).transpose(1, 2).requires_grad_() for _ in range(3)]


def _sliced_gradient(b=2, s=24, h=3, d=16, seed=1):
    """An output gradient that is a slice of a wider one, as a FLUX.1 single block passes back."""
    wide = torch.randn(b, s, 5 * h * d, generator=torch.Generator().manual_seed(seed))
    return wide[..., : h * d].unflatten(-1, (h, d)).transpose(1, 2)


def test_training_attention_hands_sdpa_its_gradient_in_the_output_strides():
    """torch 2.11's cuDNN backward caches graphs without the gradient's strides (RESULTS §8a):
    inside training_attention(), the gradient reaching SDPA's backward has the output's strides,
    the values and input gradients are unchanged, and SDPA is restored after (also on error)."""
    import torch.nn.functional as F

    from solrl.policy import training_attention

    sdpa = F.scaled_dot_product_attention
    q, k, v = _bshd_qkv()
    grad = _sliced_gradient()
    o_ref = sdpa(q, k, v)
    ref = torch.autograd.grad(o_ref, (q, k, v), grad)
    with training_attention():
        assert F.scaled_dot_product_attention is not sdpa
        o = F.scaled_dot_product_attention(q, k, v)
        seen = []
        o.register_hook(lambda g: seen.append(g.stride()))  # runs after the wrapper's hook
        got = torch.autograd.grad(o, (q, k, v), grad)
        with torch.no_grad():  # no gradient, no hook
            assert not F.scaled_dot_product_attention(q, k, v).requires_grad
    assert F.scaled_dot_product_attention is sdpa
    assert grad.stride() != o.stride() and seen == [o.stride()]
    assert torch.equal(o, o_ref)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="inside"), training_attention():
        raise RuntimeError("inside")
    assert F.scaled_dot_product_attention is sdpa


def test_training_attention_without_cudnn():
    import torch.nn.functional as F

    from solrl.policy import training_attention

    sdpa = F.scaled_dot_product_attention
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with training_attention(cudnn=False):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        assert F.scaled_dot_product_attention is sdpa
    assert torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_cudnn_backward_with_gradients_of_two_strides():
    """The minimal repro of RESULTS §8a: cuDNN SDPA at FLUX.1's training shape, backward twice,
    first with a sliced output gradient, then a dense one. Bare, it fails on torch 2.11 (H200);
    inside training_attention() it runs, and its gradients match FLASH's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from solrl.policy import training_attention

    torch.manual_seed(0)
    shape = (8, 1536, 24, 128)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
               for _ in range(3))
    grads = [torch.randn(8, 1536, 5 * 3072, device="cuda", dtype=torch.bfloat16)[..., :3072],
             torch.randn(8, 1536, 3072, device="cuda", dtype=torch.bfloat16)]
    for g in grads:
        g = g.unflatten(-1, (24, 128)).transpose(1, 2)
        with training_attention(), sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            got = torch.autograd.grad(o, (q, k, v), g)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            o_ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            ref = torch.autograd.grad(o_ref, (q, k, v), g)
        torch.cuda.synchronize()
        for a, b in zip((o, *got), (o_ref, *ref)):
            assert ((a.float() - b.float()).norm() / b.float().norm()).item() < 1e-2
