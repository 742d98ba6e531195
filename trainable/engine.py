"""The trainer: both nets, their optimizers and schedule, its data source (trainable.source), the RNG.

One `train_step` is a discriminator update then a generator update (pix2pix order), the body in
`trainable.gan_step` that the packed step shares; the trainer says how its nets are called and
updated. Losses are summed on the device and read back once per epoch, so the step itself never waits for the host.
An epoch is `trainable.loop.train_epoch`; a `Trainer` changes no process-wide state (that is
`setup_process`, called once by each entry point).
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from trainable.color import lab_normalized_to_rgb, lab_normalized_to_uint8
from trainable.condition import Conditioning, conditioned_metrics, faithful_condition
from trainable.config import Config, flatten, from_dict, to_dict
from trainable.gan_step import gan_step
from trainable.metrics import MetricAccumulator
from trainable.models import build_models
from trainable.realism import RealismProbe
from trainable.schedule import LrSchedule
from trainable.source import DataSource
from trainable.sources import open_source

STATE_FORMAT = "colorsweep-trainer"
# Keys that may differ between a checkpoint and the command that resumes it.
RESUMABLE_CHANGES = ("train.epochs", "train.device", "train.threads", "train.eval_batch_size",
                     "train.precision", "train.cuda_graph", "train.fused_adam", "train.channels_last",
                     "data.path", "data.download", "data.loader_workers", "train.fid_every", "train.kid_every",
                     "train.kid_input_size", "train.realism_images", "train.checkpoint_every")
# Building the nets draws from torch's global CPU generator; Trainers built at once in several
# threads (the pack server) take turns, so each gets the weights of its own seed.
_INIT_LOCK = threading.Lock()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def native_bf16_cpu() -> bool:
    """CPUs with AMX tiles run bf16 convolutions natively (oneDNN)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def setup_process(cfg: Config) -> None:
    """Process-wide torch settings for a process that trains `cfg`, set once by each entry point
    (the CLI and final run through `run_training`, a Tune trial, the pack server)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if resolve_device(cfg.train.device).type == "cpu":
        # Near-gray pixels give denormal ab values, slow on x86 (docs/benchmarks.md); zero looks the same.
        torch.set_flush_denormal(True)
    torch.manual_seed(cfg.train.seed)


def resolve_precision(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. On CUDA, bf16 pays only at large batches or in a
    captured graph (the eager step at batch 128 is launch-bound); on a CPU with AMX at every width
    (docs/benchmarks.md)."""
    choice = cfg.train.precision
    if choice == "fp32":
        return None
    if device.type == "cpu":
        if choice == "fp16":
            raise ValueError("train.precision: fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        return torch.bfloat16 if choice == "bf16" or native_bf16_cpu() else None
    if choice == "auto":
        big = cfg.train.batch_size >= 512 or cfg.train.cuda_graph == "on"
        return torch.bfloat16 if big and torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if choice == "bf16" else torch.float16


def resolve_memory_format(cfg: Config, device: torch.device) -> torch.memory_format:
    """channels_last where it was measured to pay: the CPU (docs/benchmarks.md)."""
    on = cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and device.type == "cpu")
    return torch.channels_last if on else torch.contiguous_format


class Trainer:
    def __init__(self, cfg: Config, data: DataSource | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        self.memory_format = resolve_memory_format(cfg, self.device)
        self.data = data if data is not None else open_source(cfg.data, self.device, self.memory_format)
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):     # the global generator is put back
            torch.default_generator.manual_seed(cfg.train.seed)
            nets = build_models(cfg)
        self.generator, self.discriminator = (m.to(self.device, memory_format=self.memory_format)
                                              for m in nets)
        fused = cfg.train.fused_adam == "on" or (cfg.train.fused_adam == "auto" and self.device.type == "cuda")
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=cfg.optim.lr_generator,
                                      betas=betas, fused=fused or None)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.optim.lr_discriminator,
                                      betas=betas, fused=fused or None)
        self.schedule = LrSchedule(cfg.optim)
        self.autocast_dtype = resolve_precision(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.rng = torch.Generator().manual_seed(cfg.train.seed)   # data order, flips, condition draws
        self.conditioning = Conditioning(cfg.loss, self.device) if cfg.loss.conditioned() else None
        self.realism = RealismProbe(cfg)          # the natural reference, built at the first evaluate
        self.epoch = 0
        self.step = 0
        # Where an epoch stopped mid-way (trainable.loop.Interrupted): steps done, the data generator
        # as the epoch began (its plan is drawn again) and the loss sums so far; 0/None/{} between epochs.
        self.epoch_step, self.epoch_rng, self.epoch_sums = 0, None, {}
        # One rank of several (trainable.parallel): per-image statistics of this rank's slice → those
        # of the global batch, before a batch mean that is not a mean of per-rank means; None alone.
        self.gather = None

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def set_lr(self, factor: float) -> None:
        """Both optimizers' lr: the base rates times `factor` (the schedule's, for the next step)."""
        for group in self.opt_g.param_groups:
            group["lr"] = self.cfg.optim.lr_generator * factor
        for group in self.opt_d.param_groups:
            group["lr"] = self.cfg.optim.lr_discriminator * factor

    def train_step(self, batch: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One D update then one G update on a normalized-Lab batch (`trainable.gan_step`); returns
        detached losses. A conditioned trainer draws its per-image targets from `noise` (B, noise_width)."""
        batch = batch.contiguous(memory_format=self.memory_format)   # no copy for a source's batches
        losses, = gan_step(self, [self], batch, noise)
        return {k: v.detach() for k, v in losses.items()}

    # The networks as `gan_step` calls them (its `Nets`): the trainer's own modules under autocast.
    def generate(self, gray: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        with self._autocast():
            return self.generator(gray, condition)

    def discriminate(self, real: torch.Tensor, real_condition: torch.Tensor | None,
                     fake: torch.Tensor, fake_condition: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():       # one autocast: D's weights are cast once for both calls
            return self.discriminator(real, real_condition), self.discriminator(fake, fake_condition)

    def judge(self, fake: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        self.discriminator.requires_grad_(False)      # G's update needs no D parameter grads
        with self._autocast():
            return self.discriminator(fake, condition)

    def update_discriminator(self, losses: list[torch.Tensor]) -> None:
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(losses[0]).backward()
        self.scaler.step(self.opt_d)

    def update_generator(self, losses: list[torch.Tensor]) -> None:
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(losses[0]).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self.discriminator.requires_grad_(True)

    def scheduled_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step outside an epoch: the schedule's lr for this step, `train_step`, the step counted."""
        self.set_lr(self.schedule.factor(self.step))
        losses = self.train_step(batch)
        self.step += 1
        return losses

    @torch.no_grad()
    def colorize(self, gray: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized L (N,1,H,W) [and c] → normalized Lab (N,3,H,W), generator in eval mode, in fp32
        whatever the training precision: the metrics then describe what the exported generator gives."""
        self.generator.eval()
        gray = gray.to(self.device).contiguous(memory_format=self.memory_format)
        condition = condition.to(self.device) if condition is not None else None
        return torch.cat([gray, self.generator(gray, condition)], 1)

    def _faithful(self, real: torch.Tensor) -> torch.Tensor | None:
        """A conditioned generator's c for each image's own statistics; None when unconditioned."""
        return None if self.conditioning is None else faithful_condition(real, self.conditioning.names)

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor | None = None, fid: bool | None = None) -> dict[str, float]:
        """All `val_*` metrics on `images` (normalized Lab; default: the validation split); with `fid`
        (None: every train.fid_every epochs) also val_fid and val_kid, and a fresh val_kid_controlled
        when train.kid_every is on (trainable.realism)."""
        images = self.data.val if images is None else images
        accumulator = MetricAccumulator(self.cfg.loss.controlled())
        for start in range(0, len(images), self.cfg.train.eval_batch_size):
            real = images[start:start + self.cfg.train.eval_batch_size].to(self.device)
            fake = self.colorize(real[:, :1], self._faithful(real))   # conditioned: the faithful mode
            accumulator.update(fake, real, lab_normalized_to_rgb(fake), lab_normalized_to_rgb(real))
        out = accumulator.finalize()
        if self.conditioning is not None:
            fixed = {name: out[f"val_control_error_{name}"] for name in self.cfg.loss.controlled()}
            out.update(conditioned_metrics(self.colorize, images.to(self.device), self.cfg.loss,
                                           self.cfg.train.eval_batch_size, fixed))
        out.update(self.realism.metrics(self.colorize, images, self.epoch, forced=bool(fid),
                                        batch=self.cfg.train.eval_batch_size, device=self.device))
        every = self.cfg.train.fid_every
        if fid or (fid is None and every and self.epoch % every == 0):   # Inception: slow on a CPU
            from trainable.fid import colorization_realism              # torchmetrics only when asked
            out.update(colorization_realism(lambda real: self.colorize(real[:, :1], self._faithful(real)),
                                            images.to(self.device), self.cfg.train.eval_batch_size))
        return out

    def sample_grid(self, count: int = 8, images: torch.Tensor | None = None) -> np.ndarray:
        """uint8 HWC grid of the first `count` validation images: rows gray / ours / real."""
        real = (self.data.val if images is None else images)[:count].to(self.device)
        fake = self.colorize(real[:, :1], self._faithful(real))
        gray = torch.cat([real[:, :1], torch.zeros_like(real[:, 1:])], 1)
        rows = [torch.cat(list(x.float()), dim=2) for x in (gray, fake, real)]
        grid = torch.cat(rows, dim=1)                                             # (3, 3H, count·W) Lab
        scale = max(1, 64 // real.shape[-1])      # 32×32 CIFAR images are shown at 64×64
        grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        return lab_normalized_to_uint8(grid[None])[0]

    def state_dict(self) -> dict:
        cuda_rng = torch.cuda.get_rng_state() if self.device.type == "cuda" else None
        return {"format": STATE_FORMAT, "version": 1, "config": to_dict(self.cfg),
                "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "step": self.step, "rng": self.rng.get_state(),
                "epoch_step": self.epoch_step, "epoch_rng": self.epoch_rng, "epoch_sums": dict(self.epoch_sums),
                "torch_rng": torch.get_rng_state(), "cuda_rng": cuda_rng}

    def load_state_dict(self, state: dict) -> None:
        check_resumable(state, self.cfg)
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        # torch's global RNG states are saved but not restored: no step draws from them (randomness
        # comes from self.rng), and setting them would reach every trainer of the process
        self.rng.set_state(state["rng"])
        if "epoch_step" in state:         # checkpoints written before mid-epoch positions have none
            self.epoch_step, self.epoch_rng, self.epoch_sums = state["epoch_step"], state["epoch_rng"], state["epoch_sums"]


def check_resumable(state: dict, cfg: Config) -> None:
    """Refuse a checkpoint made with another config (other than the keys a resume may change)."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError("not a colorsweep trainer checkpoint")
    saved, wanted = flatten(to_dict(from_dict(state["config"]))), flatten(to_dict(cfg))
    changed = [k for k in wanted if saved[k] != wanted[k] and k not in RESUMABLE_CHANGES]
    if changed:
        details = ", ".join(f"{k}: {saved[k]!r} → {wanted[k]!r}" for k in changed[:4])
        raise ValueError(f"checkpoint was made with another config ({details}); "
                         "use a new checkpoint folder or the original settings")
