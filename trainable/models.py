"""Generator and discriminator of the Lab colorization GAN (Nazeri, Ng & Ebrahimi 2018).

Generator: a symmetric U-Net from normalized L (N,1,H,W) to normalized ab (N,2,H,W) in [−1, 1].
Discriminator: a patch classifier on (L, ab) that returns logits, one per 4×4 output cell.
For 32×32 the channel widths are the paper's; larger power-of-two sizes add stride-2 stages until
the bottleneck is 2×2 (generator) or the patch grid is 4×4 (discriminator). `width` scales every
channel count. Conventions follow pix2pix: conv → BatchNorm → activation, no conv bias before a
BatchNorm, no BatchNorm on the discriminator's first layer (it sees raw images).

Conditioned (`model.conditioning=film`): G also takes the condition vector c (trainable.condition)
and a small MLP maps it to a per-channel scale and shift applied right after the BatchNorm of the
bottleneck and of every decoder stage (FiLM, Perez et al. 2017). With `model.d_conditioning=projection`
D adds the inner product of a linear embedding of c with its last features at every patch cell
(projection discriminator, Miyato & Koyama 2018). Both start at exactly the unconditioned model.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from trainable.condition import CONDITION_SIZE
from trainable.config import Config
from trainable.projection import Projection

KERNEL = 4
LEAKY_SLOPE = 0.2
BASE_WIDTH = 64
MAX_WIDTH = 512
FILM_HIDDEN = 128


def scaled(channels: int, width: float) -> int:
    """A channel count times the width multiplier, at least 1."""
    return max(1, round(channels * width))


def stage_widths(stages: int, width: float) -> list[int]:
    """min(64·2^i, 512) for i = 0 … stages − 1, scaled by width."""
    return [scaled(min(BASE_WIDTH * 2**i, MAX_WIDTH), width) for i in range(stages)]


def _stride_two_stages(image_size: int, final_size: int) -> int:
    stages = int(math.log2(image_size // final_size))
    if image_size < 2 * final_size or final_size * 2**stages != image_size:
        raise ValueError(f"image_size must be a power of two >= {2 * final_size}, got {image_size}")
    return stages


def same_pad() -> nn.ZeroPad2d:
    """TensorFlow-style 'same' padding for a 4×4 stride-1 conv: 1 before, 2 after.

    Built explicitly: Conv2d(padding='same') with an even kernel warns on every call.
    """
    return nn.ZeroPad2d((1, 2, 1, 2))


def down(in_channels: int, out_channels: int, stride: int, batch_norm: bool = True) -> nn.Sequential:
    """4×4 conv (stride 2 halves the size, stride 1 keeps it) → [BatchNorm] → LeakyReLU(0.2)."""
    layers: list[nn.Module] = [same_pad()] if stride == 1 else []
    layers.append(nn.Conv2d(in_channels, out_channels, KERNEL, stride, padding=1 if stride == 2 else 0,
                            bias=not batch_norm))
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.LeakyReLU(LEAKY_SLOPE))
    return nn.Sequential(*layers)


def up(in_channels: int, out_channels: int, resize: bool = False) -> nn.Sequential:
    """4×4 transposed conv, stride 2 (doubles the size) → BatchNorm → ReLU. With `resize`: nearest
    ×2 then a 3×3 conv instead, which cannot make the transposed conv's checkerboard (Odena et al. 2016)."""
    grow = ([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
            if resize else [nn.ConvTranspose2d(in_channels, out_channels, KERNEL, stride=2, padding=1, bias=False)])
    return nn.Sequential(*grow, nn.BatchNorm2d(out_channels), nn.ReLU())


class Film(nn.Module):
    """c (N, CONDITION_SIZE) → one (scale, shift) pair of (N, C, 1, 1) per conditioned stage.

    The last layer starts at zero, so every scale starts at 1 and every shift at 0: a new conditioned
    generator computes exactly what the unconditioned one with the same weights computes."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.channels = channels
        with torch.random.fork_rng(devices=[]):    # the other weights stay those of the same seed
            self.body = nn.Sequential(nn.Linear(CONDITION_SIZE, FILM_HIDDEN), nn.ReLU(),
                                      nn.Linear(FILM_HIDDEN, 2 * sum(channels)))
            # He init: hidden features that vary with c as much as ReLU allows, so the zero last
            # layer learns a dependence on c in the few hundred steps of a short run
            nn.init.kaiming_normal_(self.body[0].weight, nonlinearity="relu")
        nn.init.zeros_(self.body[0].bias)
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, condition: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        parts = self.body(condition).split([2 * c for c in self.channels], dim=1)
        return [(1 + part[:, :c, None, None], part[:, c:, None, None]) for part, c in zip(parts, self.channels)]


def run_stage(stage: nn.Sequential, x: torch.Tensor, film: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """A stage's layers in order, with FiLM's scale and shift right after its BatchNorm."""
    if film is None:
        return stage(x)
    for layer in stage:
        x = layer(x)
        if isinstance(layer, nn.BatchNorm2d):
            x = x * film[0] + film[1]
    return x


class Generator(nn.Module):
    """U-Net: normalized L (N,1,S,S) [and c (N, CONDITION_SIZE)] → normalized ab (N,2,S,S) in [−1, 1]."""

    def __init__(self, image_size: int = 32, width: float = 1.0, conditioned: bool = False,
                 upsample: str = "transposed", output: nn.Module | None = None):
        super().__init__()
        widths = stage_widths(_stride_two_stages(image_size, 2) + 1, width)
        # 32×32, width 1: encoder 64 @32 (stride 1), 128 @16, 256 @8, 512 @4, 512 @2.
        self.encoder = nn.ModuleList([down(1, widths[0], stride=1)])
        for in_ch, out_ch in zip(widths[:-1], widths[1:]):
            self.encoder.append(down(in_ch, out_ch, stride=2))
        # Decoder stage j upsamples and is concatenated with the mirrored encoder map of the same
        # size, so its width equals that map's: 512 @4 (+512), 256 @8 (+256), 128 @16 (+128), 64 @32 (+64).
        skip_widths = widths[-2::-1]
        self.decoder = nn.ModuleList()
        in_ch = widths[-1]
        for out_ch in skip_widths:
            self.decoder.append(up(in_ch, out_ch, resize=upsample == "resize"))
            in_ch = 2 * out_ch
        # 1×1 conv to ab, tanh keeps it in [−1, 1]: (N, 2·64, 32, 32) → (N, 2, 32, 32).
        self.head = nn.Sequential(nn.Conv2d(in_ch, 2, kernel_size=1), nn.Tanh())
        # FiLM on the bottleneck and every decoder stage: widths[-1], then the decoder's widths.
        self.film = Film([widths[-1], *skip_widths]) if conditioned else None
        # model.output=projected: (L, ab, c) → ab on the asked targets (trainable.projection); no weights
        self.output = output

    def forward(self, lightness: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """condition: c of trainable.condition; None on a conditioned generator = every statistic free."""
        films: list = [None] * (len(self.decoder) + 1)
        if self.film is not None:
            if condition is None:
                condition = lightness.new_zeros(lightness.shape[0], CONDITION_SIZE)
            films = self.film(condition.to(lightness.dtype))
        skips = []
        x = lightness
        for stage in self.encoder[:-1]:
            x = stage(x)
            skips.append(x)
        x = run_stage(self.encoder[-1], x, films[0])     # the bottleneck is not concatenated with itself
        for stage, film in zip(self.decoder, films[1:]):
            x = torch.cat([run_stage(stage, x, film), skips.pop()], dim=1)
        ab = self.head(x)
        return ab if self.output is None else self.output(lightness, ab, condition)


class Discriminator(nn.Module):
    """Patch discriminator: (L, ab) (N,3,S,S) [and c] → logits (N,1,4,4); no sigmoid."""

    def __init__(self, image_size: int = 32, width: float = 1.0, projection: bool = False):
        super().__init__()
        stride_two = _stride_two_stages(image_size, 4)
        widths = stage_widths(stride_two, width)
        # 32×32, width 1: 64 @16 (no BatchNorm), 128 @8, 256 @4.
        self.layers = nn.ModuleList()
        in_ch = 3
        for index, out_ch in enumerate(widths):
            self.layers.append(down(in_ch, out_ch, stride=2, batch_norm=index > 0))
            in_ch = out_ch
        # 512 @4, stride 1; then one logit per 4×4 patch cell: (N, 1, 4, 4).
        self.layers.append(down(in_ch, scaled(MAX_WIDTH, width), stride=1))
        self.head = nn.Sequential(same_pad(), nn.Conv2d(scaled(MAX_WIDTH, width), 1, KERNEL))
        self.projection = None
        if projection:   # embedding of c, started at zero so D starts unconditioned
            with torch.random.fork_rng(devices=[]):
                self.projection = nn.Linear(CONDITION_SIZE, scaled(MAX_WIDTH, width), bias=False)
            nn.init.zeros_(self.projection.weight)

    def forward(self, lab: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        x = lab
        for layer in self.layers:
            x = layer(x)
        logits = self.head(x)
        if self.projection is not None and condition is not None:
            # y^T V φ(x) per patch cell: (N, C) · (N, C, 4, 4) summed over C → (N, 1, 4, 4)
            embedded = self.projection(condition.to(x.dtype))[:, :, None, None]
            logits = logits + (embedded * x).sum(1, keepdim=True)
        return logits


def _gain_of(block: nn.Sequential) -> tuple[str, float]:
    """The kaiming nonlinearity and parameter for the activation that ends a block."""
    last = block[-1]
    if isinstance(last, nn.LeakyReLU):
        return "leaky_relu", last.negative_slope
    if isinstance(last, nn.ReLU):
        return "relu", 0.0
    if isinstance(last, nn.Tanh):
        return "tanh", 0.0
    return "linear", 0.0


def init_weights(module: nn.Module) -> nn.Module:
    """He init (normal, fan_in) for every conv, gain set by its block's activation; BN to (1, 0)."""
    for block in module.modules():
        if isinstance(block, nn.Sequential):
            nonlinearity, slope = _gain_of(block)
            for layer in block:
                if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.kaiming_normal_(layer.weight, a=slope, mode="fan_in", nonlinearity=nonlinearity)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)
        elif isinstance(block, nn.BatchNorm2d):
            nn.init.ones_(block.weight)
            nn.init.zeros_(block.bias)
    return module


def build_generator(cfg: Config) -> Generator:
    """The generator cfg describes (conditioned or not), with PyTorch's default initialization."""
    output = Projection(cfg.loss) if cfg.model.output == "projected" else None
    return Generator(cfg.data.image_size, cfg.model.width, conditioned=cfg.model.conditioning == "film",
                     upsample=cfg.model.upsample, output=output)


def build_models(cfg: Config) -> tuple[Generator, Discriminator]:
    """Generator and discriminator for cfg.data.image_size and cfg.model.width, He-initialized.

    The generator's last 1×1 conv starts at zero, so a new generator outputs ab = 0: training starts
    from the gray baseline (pixel accuracy 0.54 at t = 5 on CIFAR-10) instead of He-initialized color
    noise (about 0.02), which short runs otherwise spend their first epochs unlearning.
    """
    generator = init_weights(build_generator(cfg))
    discriminator = init_weights(Discriminator(cfg.data.image_size, cfg.model.width,
                                               projection=cfg.model.d_conditioning == "projection"))
    nn.init.zeros_(generator.head[0].weight)
    nn.init.zeros_(generator.head[0].bias)
    return generator, discriminator
