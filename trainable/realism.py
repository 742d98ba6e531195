"""Realism judged against natural images that have the asked statistics.

A target σ is judged against a *natural reference*: the validation images whose own statistic lies
within REFERENCE_BAND of σ, the `count` nearest of them. Real images chroma-scaled to σ are not
used: they are artificial themselves, and a metric against them rewards chroma scaling. Where fewer
than `count` images lie in the band there is no natural reference, and realism is not judged there;
`NaturalReference.judged_range` says, per statistic, where it can be.

A trial's *points* are its targets: the fixed targets of an unconditioned model (one point; none
at all: the whole validation split's first images), or each point of a conditioned model's grid
(`trainable.condition.control_grid`, one conditioned statistic present at a time, as the grid
metrics do). At each point the generator colorizes the reference images' own L, asked for the
point's targets, so a perfect colorization reproduces the reference and content plays no part.

- `val_kid_controlled`: the unbiased KID (polynomial kernel, all pairs) between Inception features
  of those colorizations and of the reference, averaged over the judged points; lower is better.
- `val_artefact`: the mean |log2| ratio, over radial frequency bands of the ab power spectrum (the
  mean chroma being band 0), between the colorizations' power shares (per image, then averaged)
  and the reference's. 0 = the same chroma texture; checkerboards and dot patterns raise the high
  bands, blotches the middle ones, a one-hue cast band 0. Scale-free: desaturation does not count.
- `val_realism_judged`: the share of the trial's points that have a natural reference. Where it is
  0, both metrics above are NaN ("no natural reference").
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch

from trainable.color import CONTROL_NAMES, distance, image_statistics, lab_normalized_to_rgb
from trainable.condition import condition_vector, control_grid, fixed_targets
from trainable.config import Config, LossConfig

REFERENCE_BAND = 0.05       # |own statistic − target| of a reference image (hue: turns of arc)
RANGE_STEP = 0.01           # judged_range scans targets on this grid
SPECTRUM_BANDS = 6          # radial bands of (0, 0.5] cycles per pixel, after the mean (band 0)
SHARE_FLOOR = 1e-4          # power shares below this count as this: a band empty on both sides
                            # is equal, and an all-gray output scores high instead of infinite
STAT_CHUNK = 4096           # images converted to RGB at once

Point = Mapping[str, float]
Colorize = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def statistic_high(name: str, values: torch.Tensor) -> float:
    """The top of a statistic's scale: 1, or the largest value seen for colorfulness (unbounded)."""
    return float(values.max()) + REFERENCE_BAND if name == "colorfulness" else 1.0


class NaturalReference:
    """The per-image statistics of a set of real images (normalized Lab) and the images near a point."""

    def __init__(self, real_lab: torch.Tensor, band: float = REFERENCE_BAND):
        self.images, self.band = real_lab, band
        parts = [image_statistics(lab_normalized_to_rgb(real_lab[i:i + STAT_CHUNK].float()))
                 for i in range(0, len(real_lab), STAT_CHUNK)]
        self.stats = {name: torch.cat([p[name] for p in parts]) for name in CONTROL_NAMES}
        self._features: dict[tuple, torch.Tensor] = {}

    def gaps(self, point: Point) -> torch.Tensor:
        """(N,) the largest distance of each image's statistics from the point's targets."""
        gap = torch.zeros(len(self.images), device=self.images.device)
        for name, target in point.items():
            gap = torch.maximum(gap, distance(name, self.stats[name], target).to(gap))
        return gap

    def nearest(self, point: Point, count: int) -> torch.Tensor | None:
        """Indices of the `count` images nearest the point, all within the band; None when fewer
        than `count` lie in it (no natural reference)."""
        gap = self.gaps(point)
        if int((gap <= self.band).sum()) < count:
            return None
        return torch.sort(gap, stable=True).indices[:count]

    def covered(self, name: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(targets on a RANGE_STEP grid over the statistic's scale, whether each has `count`
        reference images)."""
        values = self.stats[name]
        steps = int(statistic_high(name, values) / RANGE_STEP) + 1
        grid = torch.arange(steps, dtype=values.dtype, device=values.device) * RANGE_STEP
        if name == "hue":
            grid = grid[grid < 1]
        near = (distance(name, values[None, :], grid[:, None]) <= self.band).sum(1)
        return grid, near >= count

    def judged_range(self, name: str, count: int) -> tuple[float, float] | None:
        """(lowest, highest) target of `name`, on a RANGE_STEP grid, that has `count` reference
        images; None when none has. Hue's covered targets need not be one arc (see `covered`)."""
        grid, enough = self.covered(name, count)
        judged = grid[enough]
        return None if len(judged) == 0 else (round(float(judged.min()), 4), round(float(judged.max()), 4))

    def features(self, key: tuple, indices: torch.Tensor, extract: Callable[[torch.Tensor], torch.Tensor]):
        """The reference images' features under `key`, computed once (the images never change)."""
        if key not in self._features:
            self._features[key] = extract(lab_normalized_to_rgb(self.images[indices].float()))
        return self._features[key]


def realism_points(loss_cfg: LossConfig) -> list[dict[str, float]]:
    """The targets realism is judged at: the fixed ones, or with each conditioned grid point."""
    fixed = {name: c.target for name, c in loss_cfg.controlled().items()}
    conditioned = loss_cfg.conditioned()
    if not conditioned:
        return [fixed]
    return [{**fixed, name: t} for name, c in conditioned.items() for t in control_grid(name, c.range)]


def describe(point: Point) -> str:
    return ", ".join(f"{name}={target:g}" for name, target in point.items()) or "no target"


def reference_shortfall(cfg: Config, reference: NaturalReference) -> str | None:
    """One line naming the first point of cfg with fewer than train.realism_images reference
    images, and the judged range of its statistics; None when every point has enough."""
    count = cfg.train.realism_images
    for point in realism_points(cfg.loss):
        if reference.nearest(point, count) is None:
            near = int((reference.gaps(point) <= reference.band).sum())
            ranges = "; ".join(f"{n} judged in {reference.judged_range(n, count)}" for n in point)
            return (f"train.realism_images: {describe(point)} has {near} validation images within "
                    f"±{reference.band:g}, fewer than {count} (no natural reference; {ranges or 'empty split'})")
    return None


def kid_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² with the cubic polynomial kernel (x·y/d + 1)³ of two feature sets (≥ 2 each),
    over all pairs (Bińkowski et al. 2018): exact for small sets, no subset sampling."""
    x, y = x.double(), y.double()
    d = x.shape[1]
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def band_power(ab: torch.Tensor) -> torch.Tensor:
    """(N, SPECTRUM_BANDS + 1) power of each image's normalized ab (N,2,H,W), both channels summed:
    band 0 the mean (DC), then radial bands of equal width up to 0.5 cycles/pixel (corners above
    0.5 go to the last band)."""
    power = torch.fft.rfft2(ab.float(), norm="ortho").abs().square().sum(dim=1).flatten(1)
    fy = torch.fft.fftfreq(ab.shape[-2], device=ab.device)
    fx = torch.fft.rfftfreq(ab.shape[-1], device=ab.device)
    bands = torch.ceil(torch.hypot(fy[:, None], fx[None, :]) / 0.5 * SPECTRUM_BANDS).long()
    bands = bands.clamp_(0, SPECTRUM_BANDS).flatten()
    return power.new_zeros(len(ab), SPECTRUM_BANDS + 1).index_add_(1, bands, power)


def band_shares(ab: torch.Tensor) -> torch.Tensor:
    """(SPECTRUM_BANDS + 1,) each image's share of its power per band, averaged over the images:
    every image weighs the same (pooled power would be ruled by the few most colorful ones)."""
    power = band_power(ab)
    return (power / power.sum(1, keepdim=True).clamp_min(torch.finfo(power.dtype).tiny)).mean(0)


def artefact_distance(fake_ab: torch.Tensor, real_ab: torch.Tensor) -> float:
    """Mean over bands of |log2(fake share / real share)| of the ab power (see the module doc)."""
    fake, real = band_shares(fake_ab), band_shares(real_ab)
    return float((torch.log2(fake.clamp_min(SHARE_FLOOR)) - torch.log2(real.clamp_min(SHARE_FLOOR))).abs().mean())


def point_condition(point: Point, conditioned: Sequence[str], batch: int, device) -> torch.Tensor | None:
    """A conditioned generator's c for the point's conditioned statistics; None when unconditioned."""
    if not conditioned:
        return None
    asked = {name: point[name] for name in conditioned if name in point}
    return condition_vector(fixed_targets(asked, batch, device))


class RealismProbe:
    """One trainer's realism metrics: the natural reference of its validation images (built once)
    and the last KID, carried on the reports between two KID evaluations (train.kid_every)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.reference: NaturalReference | None = None
        self.source: torch.Tensor | None = None
        self.last_kid: float | None = None

    def kid_due(self, epoch: int, forced: bool) -> bool:
        every = self.cfg.train.kid_every
        if not every:
            return False
        return forced or self.last_kid is None or epoch % every == 0 or epoch >= self.cfg.train.epochs

    def metrics(self, colorize: Colorize, images: torch.Tensor, epoch: int, forced: bool = False,
                batch: int = 500, device: torch.device | str = "cpu") -> dict[str, float]:
        """val_artefact, val_realism_judged and (train.kid_every > 0) val_kid_controlled of
        colorize(L, c) → normalized Lab against the natural reference in `images` (kept on device)."""
        if self.source is not images:
            self.reference, self.source = NaturalReference(images.to(device)), images
        kid = self.kid_due(epoch, forced)
        scores = judge(colorize, self.reference, self.cfg, kid, batch)
        if kid:
            self.last_kid = scores["val_kid_controlled"]
        if self.cfg.train.kid_every:
            scores["val_kid_controlled"] = self.last_kid
        return scores


def colorized_at(colorize: Colorize, real: torch.Tensor, point: Point, conditioned: Sequence[str],
                 batch: int) -> torch.Tensor:
    """The real images' L colorized in batches, asked for the point's conditioned targets."""
    parts = []
    for start in range(0, len(real), batch):
        gray = real[start:start + batch, :1]
        parts.append(colorize(gray, point_condition(point, conditioned, len(gray), gray.device)))
    return torch.cat(parts)


def judge(colorize: Colorize, reference: NaturalReference, cfg: Config, kid: bool,
          batch: int = 500) -> dict[str, float]:
    """The realism metrics of colorize over cfg's points (see the module doc); KID only with `kid`."""
    count, conditioned = cfg.train.realism_images, tuple(cfg.loss.conditioned())
    points = realism_points(cfg.loss)
    if kid:
        from trainable.fid import cached_network           # the Inception only when asked
        network, size = cached_network(str(reference.images.device)), cfg.train.kid_input_size

        def features(rgb: torch.Tensor) -> torch.Tensor:
            return network.pooled(rgb, size).double().cpu()
    artefacts, kids = [], []
    for point in points:
        indices = reference.nearest(point, count)
        if indices is None:
            continue
        real = reference.images[indices]
        fake = colorized_at(colorize, real, point, conditioned, batch)
        artefacts.append(artefact_distance(fake[:, 1:], real[:, 1:]))
        if kid:
            real_features = reference.features((describe(point), count, size), indices, features)
            kids.append(kid_unbiased(features(lab_normalized_to_rgb(fake.float())), real_features))
    out = {"val_artefact": sum(artefacts) / len(artefacts) if artefacts else math.nan,
           "val_realism_judged": len(artefacts) / len(points)}
    if kid:
        out["val_kid_controlled"] = sum(kids) / len(kids) if kids else math.nan
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m trainable.realism IMAGES.npz`: per statistic, the targets a natural reference of
    --images images exists for in a uint8 NHWC `images` array (the judged range)."""
    import argparse

    import numpy as np

    from trainable.adjust import reachable_share
    from trainable.data import GRAY_CHROMA, mean_chroma, to_lab
    parser = argparse.ArgumentParser(prog="python -m trainable.realism", description=main.__doc__)
    parser.add_argument("npz", help="an .npz file with a uint8 (N, H, W, 3) `images` array")
    parser.add_argument("--images", type=int, default=50,
                        help="reference images per target (train.realism_images)")
    parser.add_argument("--band", type=float, default=REFERENCE_BAND,
                        help="|statistic − target| of a reference image")
    parser.add_argument("--reach", type=int, default=0, metavar="N",
                        help="also print, per statistic, the share of its judged range's grid targets that "
                             "model.output=projected reaches on the first N colored images")
    args = parser.parse_args(argv)
    try:
        with np.load(args.npz) as archive:
            images = archive["images"]
    except (OSError, KeyError, ValueError) as err:
        parser.error(f"{args.npz}: {err}")
    lab = to_lab(images, "cpu")
    colored = lab[mean_chroma(lab) >= GRAY_CHROMA]           # the trainer drops gray images too
    reference = NaturalReference(colored, args.band)
    print(f"{len(colored)} colored of {len(images)} images, {args.images} per target within ±{args.band:g}")
    for name in CONTROL_NAMES:
        values = reference.stats[name]
        judged = reference.judged_range(name, args.images)
        where = "no natural reference anywhere" if judged is None else f"judged in [{judged[0]:g}, {judged[1]:g}]"
        if name == "hue":
            grid, enough = reference.covered(name, args.images)
            where += f" ({float(enough.float().mean()):.0%} of the circle)"
        if args.reach and judged is not None:
            grid = control_grid(name, (0.0, 1.0) if name == "hue" else judged)
            share = reachable_share(colored[:args.reach], name, list(grid))
            where += f"; projection reaches {share:.1%} of {len(grid)} targets on {min(args.reach, len(colored))} images"
        print(f"  {name:<13} mean {float(values.mean()):.3f}  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
