"""Prompt-free image rewards: JPEG compressibility (DDPO) and a simple aesthetic-style score."""

from __future__ import annotations

import io

import numpy as np
import torch


def _check_images(images: torch.Tensor, prompts: list[str]) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got {got}")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        n = "a str" if isinstance(prompts, str) else len(prompts)
        raise ValueError(f"need one prompt per image: {images.shape[0]} images, {n} prompts")


class JpegCompressibilityReward:
    """-(JPEG size in kB) at `quality` (DDPO's jpeg_compressibility): higher = simpler image.

    Encoded with Pillow on CPU (deterministic); returns float32 [B] on images' device.
    """

    name = "jpeg_compressibility"

    def __init__(self, quality: int = 95):
        if not 1 <= quality <= 95:
            raise ValueError(f"quality must be in 1..95, got {quality}")
        self.quality = quality

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from PIL import Image

        _check_images(images, prompts)
        arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        arr = arr.permute(0, 2, 3, 1).cpu().numpy()
        sizes = []
        for a in arr:
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(a)).save(buf, format="JPEG", quality=self.quality)
            sizes.append(buf.tell() / 1000.0)
        return -torch.tensor(sizes, dtype=torch.float32, device=images.device)


class AestheticReward:
    """A simple, hand-made aesthetic-style score in [0, 1] (no learned predictor):

        0.5 * colourfulness + 0.5 * crispness
        colourfulness = min(M / 100, 1), M = Hasler & Suesstrunk (2003) on 0..255 RGB:
                        sqrt(std(rg)^2 + std(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2),
                        rg = R - G, yb = (R + G) / 2 - B
        crispness     = share of pixels whose channels are all within `tol` of 0 or 1
                        (flat, saturated colours; blur and noise lower it)

    Batched torch on images' device; returns float32 [B].
    """

    name = "aesthetic"

    def __init__(self, tol: float = 0.15):
        if not 0 < tol < 0.5:
            raise ValueError(f"tol must be in (0, 0.5), got {tol}")
        self.tol = tol

    def components(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.detach().float().clamp(0, 1)
        r, g, b = (x[:, i] * 255 for i in range(3))
        rg, yb = r - g, (r + g) / 2 - b
        std = (rg.flatten(1).var(1, unbiased=False) + yb.flatten(1).var(1, unbiased=False)).sqrt()
        mean = (rg.flatten(1).mean(1) ** 2 + yb.flatten(1).mean(1) ** 2).sqrt()
        colourfulness = ((std + 0.3 * mean) / 100).clamp(max=1)
        near = torch.minimum(x, 1 - x) <= self.tol
        crispness = near.all(1).flatten(1).float().mean(1)
        return {"colourfulness": colourfulness, "crispness": crispness}

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        _check_images(images, prompts)
        c = self.components(images)
        return (0.5 * c["colourfulness"] + 0.5 * c["crispness"]).float()
