"""Flow-matching pretraining of the toy text-to-image model on procedurally generated scenes.

    python -m solrl.toy.pretrain --out runs/toy-pretrain                     # H200: ~5.5 min
    python -m solrl.toy.pretrain --out /tmp/smoke --steps 3 --batch-size 8 --device cpu
    cp runs/toy-pretrain/model.safetensors runs/toy-pretrain/config.json solrl/toy/weights/

Every step draws a fresh batch on the device: prompts from the enumerated grammar
(world.sample_prompt_ids, the training category mix), random layouts, hard-edged renders,
token ids by table lookup; no files, no DataLoader. Loss: rectified flow, x_s = (1 - s) x0 +
s eps with s ~ logit-normal(0, 1) (SD3), target v = eps - x0, MSE. AdamW, linear warmup then
cosine decay to 10%, grad-norm clip 1, bf16 autocast on CUDA, an EMA of the weights (what is
saved). A share `cond_dropout` of prompts is replaced by the empty prompt, so classifier-free
guidance is possible (the Sol-RL objectives here are CFG-free).

Writes into --out: model.safetensors + config.json (the EMA weights, atomically: temp +
rename; the directory can be copied into solrl/toy/weights/), loss.png, samples_<step>.png
grids (EMA, 10 Euler steps, 16 eval prompts, GenEval-correct framed green) and
train_log.jsonl (one line per log interval). Reproducible: the same seed, device type and
batch size give the same data and initialisation.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..rewards.geneval import GenEvalReward
from . import world
from .eval import generate, resolve_device, save_grid
from .model import ToyModelConfig, ToyT2I
from .text import table_token_ids


@dataclass
class PretrainConfig:
    """Pretrain the toy model (defaults: the shipped weights' run on one H200)."""

    out: Path = Path("runs/toy-pretrain")
    """Output directory (created)."""
    steps: int = 7000
    """Optimizer steps (H200, compiled: ~26 steps/s, 320 s in all)."""
    batch_size: int = 512
    """Images per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    warmup: int = 300
    """Linear warmup steps."""
    weight_decay: float = 0.0
    ema_decay: float = 0.9995
    """EMA decay of the saved weights (warmed up as min(decay, (1 + t) / (10 + t)))."""
    cond_dropout: float = 0.05
    """Share of prompts replaced by the empty prompt."""
    seed: int = 0
    device: str = "auto"
    """"auto" = cuda if available, else cpu."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    compile: bool = True
    """torch.compile the transformer (CUDA only; 1.36x faster steps on the H200 after ~35 s
    of compilation; ignored on CPU)."""
    log_every: int = 50
    sample_every: int = 2500
    """Steps between sample grids (and at the end); 0 = only at the end."""
    sample_steps: int = 10
    """Euler steps of the sample grids."""
    save_dtype: str = "float16"
    """Dtype of the saved weights: float16 (7 MB) or float32."""
    model: ToyModelConfig = field(default_factory=ToyModelConfig)

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.save_dtype not in ("float16", "float32", "bfloat16"):
            raise ValueError(f"save_dtype must be float16/float32/bfloat16, got {self.save_dtype}")


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to 0.1 * cfg.lr at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def sample_batch(
    n: int, gen_cpu: torch.Generator, gen_dev: torch.Generator, device: torch.device,
    tokens_table: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [n, 3, H, W] float32 in {0, 1}, token ids [n, L] int64), both on device."""
    table = world.prompt_table()
    ids = world.sample_prompt_ids(n, gen_cpu)
    objs = world.layout(
        table.count[ids].to(device), table.colour[ids].to(device), table.shape[ids].to(device),
        table.relation[ids].to(device), generator=gen_dev,
    )
    return world.render(objs), tokens_table[ids.to(device)]


def save_loss_plot(losses: list[tuple[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, vals = zip(*losses)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, vals, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss (mean over log interval)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


GRID_PROMPTS = 16


@torch.no_grad()
def sample_grid(model: ToyT2I, cfg: PretrainConfig, step: int) -> float:
    """EMA samples of 16 eval prompts -> samples_<step>.png; returns their GenEval accuracy."""
    prompts = world.eval_prompts()[:: len(world.eval_prompts()) // GRID_PROMPTS][:GRID_PROMPTS]
    was_training = model.training
    model.eval()
    images = generate(model, prompts, cfg.sample_steps, seed=1234)
    model.train(was_training)
    res = GenEvalReward().evaluate(images, prompts)
    save_grid(images, prompts, cfg.out / f"samples_{step:06d}.png", ok=res.correct.cpu())
    return float(res.correct.mean())


def main(cfg: PretrainConfig) -> Path:
    from tqdm import tqdm

    device = resolve_device(cfg.device)
    cfg.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = ToyT2I(cfg.model).to(device).train()
    ema = ToyT2I(cfg.model).to(device).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    params = [p for p in model.parameters() if p.requires_grad]
    ema_params = [p for p in ema.parameters()]
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    use_compile = cfg.compile and device.type == "cuda"
    transformer = torch.compile(model.transformer) if use_compile else model.transformer
    gen_cpu = torch.Generator().manual_seed(cfg.seed)
    gen_dev = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    tokens_table = table_token_ids(cfg.model.max_tokens).to(device)
    empty = model.tokenizer([""], device=device)  # [1, L]
    autocast = cfg.bf16 and device.type == "cuda"
    print(f"toy pretrain: {n_params / 1e6:.2f}M parameters, device {device}, batch "
          f"{cfg.batch_size}, {cfg.steps} steps -> {cfg.out}", flush=True)

    losses: list[tuple[int, float]] = []
    log_path = cfg.out / "train_log.jsonl"
    log_path.write_text("")
    running = torch.zeros((), device=device)
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="pretrain", dynamic_ncols=True, mininterval=2.0)
    for step in bar:
        # data: fresh scenes rendered on the device
        images, tokens = sample_batch(cfg.batch_size, gen_cpu, gen_dev, device, tokens_table)
        drop = torch.rand(cfg.batch_size, device=device, generator=gen_dev) < cfg.cond_dropout
        tokens = torch.where(drop[:, None], empty, tokens)
        x0 = model.images_to_latents(images)  # [B, 3, H, W] in [-1, 1]
        eps = torch.randn(x0.shape, device=device, generator=gen_dev)
        sigma = torch.sigmoid(torch.randn(cfg.batch_size, device=device, generator=gen_dev))
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * eps
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            cond = model.encode_tokens(tokens)
            v = model.velocity(xt, sigma, cond, transformer=transformer)
        loss = torch.nn.functional.mse_loss(v.float(), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - decay)
        running += loss.detach()

        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = (step % cfg.log_every) + 1
            mean_loss = float(running) / n  # syncs with the device once per interval
            running.zero_()
            elapsed = time.perf_counter() - t0
            losses.append((step + 1, mean_loss))
            rec = {"step": step + 1, "loss": mean_loss, "lr": lr_at(step, cfg),
                   "seconds": round(elapsed, 2),
                   "images_per_s": round((step + 1) * cfg.batch_size / elapsed, 1)}
            with log_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rec['images_per_s']:.0f}")
        last = step + 1 == cfg.steps
        if last or (cfg.sample_every and (step + 1) % cfg.sample_every == 0):
            acc = sample_grid(ema, cfg, step + 1)
            bar.write(f"step {step + 1}: EMA GenEval accuracy on {GRID_PROMPTS} grid prompts "
                      f"({cfg.sample_steps} steps) = {acc:.2f}")
    bar.close()

    seconds = time.perf_counter() - t0
    meta = {"pretrain": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in asdict(cfg).items() if k != "model"},
            "final_loss": losses[-1][1], "train_seconds": round(seconds, 1),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__}
    ema.save_pretrained(cfg.out, dtype=getattr(torch, cfg.save_dtype), meta=meta)
    save_loss_plot(losses, cfg.out / "loss.png")
    print(f"done in {seconds:.0f} s, final loss {losses[-1][1]:.4f}; wrote {cfg.out}", flush=True)
    return cfg.out


if __name__ == "__main__":
    import tyro

    main(tyro.cli(PretrainConfig))
