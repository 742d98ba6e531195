"""The naive baseline the benchmarks compare against: a plain eager PyTorch loop.

What a straightforward port of the seed project does: uint8 RGB batches converted to Lab every step,
plain (for-each) Adam, losses read back with `.item()` after every step for logging. Same models,
same losses, same batch size as ours, so the ratio measures the engineering, not the maths.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from trainable.color import lab_normalized_to_rgb, rgb_to_lab_normalized
from trainable.config import Config
from trainable.losses import discriminator_loss, generator_loss
from trainable.models import build_models


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_images_per_second(cfg: Config, images: np.ndarray, steps: int, device: torch.device,
                            warmup: int = 3) -> float:
    """Images per second of the naive loop over `steps` steps on uint8 NHWC `images`."""
    torch.manual_seed(cfg.train.seed)
    generator, discriminator = (m.to(device) for m in build_models(cfg))
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.optim.lr_generator, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.optim.lr_discriminator, betas=betas)
    batch_size, rng = cfg.train.batch_size, np.random.default_rng(0)
    log = []
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            started = time.perf_counter()
        index = rng.integers(0, len(images), batch_size)
        rgb = torch.from_numpy(images[index]).to(device).permute(0, 3, 1, 2).float() / 255
        lab = rgb_to_lab_normalized(rgb)
        gray, real_ab = lab[:, :1], lab[:, 1:]
        fake_ab = generator(gray)
        d = discriminator_loss(discriminator(torch.cat([gray, real_ab], 1)),
                               discriminator(torch.cat([gray, fake_ab.detach()], 1)), cfg.loss.real_label)
        opt_d.zero_grad()
        d["loss_d"].backward()
        opt_d.step()
        fake_rgb = lab_normalized_to_rgb(torch.cat([gray, fake_ab], 1))
        g = generator_loss(discriminator(torch.cat([gray, fake_ab], 1)), fake_ab, real_ab, fake_rgb, cfg.loss)
        opt_g.zero_grad()
        g["loss_g"].backward()
        opt_g.step()
        log.append((d["loss_d"].item(), g["loss_g"].item()))     # the per-step host sync
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


def peak_memory_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def peak_text(gb: float, label: str = "peak") -> str:
    """'peak 1.23 GB', or nothing where it was not measured (the CPU)."""
    return "" if gb != gb else f"  {label} {gb:.2f} GB"
