"""The one configuration tree: frozen dataclasses loaded from YAML, with dotted overrides.

Every default lives here and nowhere else. Unknown keys, wrong types and out-of-range values are
rejected at load time with the key's dotted path in the message. The reading (`read_yaml`,
`build`, `parse_assignment`) knows no particular schema: the sweep spec is read with it too.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trainable.interval import parse_interval

CONTROL_NAMES = ("saturation", "value", "hue", "red", "green", "blue", "colorfulness")
DATASETS = ("cifar10", "npz", "folder", "synthetic", "shards")
SCHEDULES = ("plateau", "exponential", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SWITCHES = ("auto", "on", "off")
CONDITIONINGS = ("none", "film")
D_CONDITIONINGS = ("none", "projection")
UPSAMPLES = ("transposed", "resize")
OUTPUTS = ("learned", "projected")
KID_MIN_IMAGES = 2                # the unbiased KID estimate needs two images per set
L1_TARGETS = ("original", "adjusted")
CONTROL_ON = ("generator", "discriminator", "both")


@dataclass(frozen=True)
class ControlConfig:
    """One control term: weight λ_p and target σ_p (hue in turns, colorfulness on a 0..1 RGB scale)."""
    weight: float = 0.0
    target: float = 0.5
    # [low, high] makes the statistic an input of a conditioned generator (model.conditioning=film):
    # per-image targets drawn from it replace `target`; empty = not conditioned. Hue: turns, circular.
    range: tuple[float, ...] = ()


@dataclass(frozen=True)
class ConditionConfig:
    """How a conditioned generator's per-image training targets are drawn."""
    own_fraction: float = 0.5     # share of images conditioned on their own ground-truth statistics
    drop: float = 0.1             # probability that a present statistic is hidden (left free)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    path: str = ""
    image_size: int = 32
    train_limit: int = 0          # use at most N training images; 0 = all
    val_limit: int = 0            # use at most N validation images; 0 = all
    val_fraction: float = 0.1     # share of the training images held out for validation
    split_seed: int = 0           # fixed so every trial of a sweep sees the same validation images
    download: bool = False        # cifar10: fetch the official archive when it is absent
    flip: bool = True             # random horizontal flips
    synthetic_size: int = 512     # number of images the synthetic dataset makes
    adjust_fraction: float = 0.0  # share of training images replaced by their target-adjusted versions
    loader_workers: int = 2       # shards: loader processes per trainer that decode, crop and flip


@dataclass(frozen=True)
class ModelConfig:
    width: float = 1.0            # channel multiplier; 1.0 = the paper's widths
    conditioning: str = "none"    # film: G takes per-image targets (Perez et al. 2017)
    d_conditioning: str = "none"  # projection: D sees them too (Miyato & Koyama 2018)
    upsample: str = "transposed"  # resize: nearest ×2 then 3×3 conv (no checkerboard; Odena et al. 2016)
    output: str = "learned"       # projected: G's last layer moves ab onto the targets (trainable.projection)


@dataclass(frozen=True)
class LossConfig:
    l1_weight: float = 100.0
    real_label: float = 0.9       # one-sided label smoothing; 1.0 turns it off
    adversarial_weight: float = 1.0   # 0 = the plain U-Net of the paper's comparisons
    l1_target: str = "original"   # adjusted: L1 toward the real image moved to the targets (trainable.adjust)
    control_on: str = "generator"  # discriminator: D sees adjusted reals, G has no λ terms; both: both
    saturation: ControlConfig = field(default_factory=ControlConfig)
    value: ControlConfig = field(default_factory=ControlConfig)
    hue: ControlConfig = field(default_factory=ControlConfig)
    red: ControlConfig = field(default_factory=ControlConfig)
    green: ControlConfig = field(default_factory=ControlConfig)
    blue: ControlConfig = field(default_factory=ControlConfig)
    colorfulness: ControlConfig = field(default_factory=ControlConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)

    def controlled(self) -> dict[str, ControlConfig]:
        """The statistics with a non-zero weight and a fixed target (no range), by name."""
        controls = {name: getattr(self, name) for name in CONTROL_NAMES}
        return {name: c for name, c in controls.items() if c.weight > 0 and not c.range}

    def generator_controls(self) -> dict[str, ControlConfig]:
        """The fixed-target λ terms in G's loss: none when only D demands the targets (control_on)."""
        return {} if self.control_on == "discriminator" else self.controlled()

    def conditioned(self) -> dict[str, ControlConfig]:
        """The statistics with a range: inputs of a conditioned generator, by name."""
        controls = {name: getattr(self, name) for name in CONTROL_NAMES}
        return {name: c for name, c in controls.items() if c.range}


@dataclass(frozen=True)
class OptimConfig:
    lr_generator: float = 2e-4
    lr_discriminator: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    schedule: str = "plateau"     # plateau: lr ÷ factor when the training L1 stalls; exponential: per step
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    lr_decay_steps: int = 10000   # exponential: lr · 0.1^(step / lr_decay_steps)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    seed: int = 100
    device: str = "auto"          # auto = cuda when available, else cpu
    precision: str = "auto"       # auto = bf16 where measured faster (see engine.resolve_precision)
    eval_batch_size: int = 500
    threads: int = 0              # torch CPU threads; 0 = leave torch's default
    cuda_graph: str = "auto"      # capture the whole D+G step in one CUDA graph; auto = off until measured
    fused_adam: str = "auto"      # auto = on for CUDA
    channels_last: str = "auto"   # NHWC convolutions; auto = on for the CPU (measured), off on CUDA
    fid_every: int = 0            # FID/KID on the validation split every N epochs; 0 = off (slow on a CPU)
    kid_every: int = 0            # val_kid_controlled every N epochs and at the last; 0 = off (trainable.realism)
    kid_input_size: int = 128     # Inception input side for val_kid_controlled; 299 = FID's own
    realism_images: int = 50      # natural reference images per target (val_kid_controlled, val_artefact)
    # a mid-epoch checkpoint every N steps, '500 steps', or a duration ('10m', '90s'); 0 = at epoch ends only
    checkpoint_every: int | str = 0
    batch_size_total: int = 0     # data-parallel (--workers N): the global batch; 0 = batch_size × N
    scale_lr: bool = False        # data-parallel: both lrs × (global batch / batch_size)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _check(key: str, ok: bool, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def _validate(cfg: Config) -> None:
    d, m, lo, o, t = cfg.data, cfg.model, cfg.loss, cfg.optim, cfg.train
    _check("data.dataset", d.dataset in DATASETS, f"must be one of {', '.join(DATASETS)}, got {d.dataset!r}")
    size_ok = d.image_size >= 16 and (d.image_size & (d.image_size - 1)) == 0
    _check("data.image_size", size_ok, f"must be a power of two >= 16, got {d.image_size}")
    _check("data.train_limit", d.train_limit >= 0, "must be >= 0")
    _check("data.val_limit", d.val_limit >= 0, "must be >= 0")
    _check("data.val_fraction", 0 < d.val_fraction < 1, "must be in (0, 1)")
    _check("data.synthetic_size", d.synthetic_size >= 2, "must be >= 2")
    _check("data.loader_workers", d.loader_workers >= 0, "must be >= 0")
    _check("data.path", d.dataset != "shards" or bool(d.path),
           "must name a shard folder (python -m trainable.shards SRC DST) for data.dataset=shards")
    _check("model.width", 0 < m.width <= 4, f"must be in (0, 4], got {m.width}")
    _check("loss.l1_weight", lo.l1_weight >= 0, "must be >= 0")
    _check("loss.real_label", 0.5 < lo.real_label <= 1, "must be in (0.5, 1]")
    _validate_adjusted(cfg)
    for name in CONTROL_NAMES:
        control = getattr(lo, name)
        _check(f"loss.{name}.weight", control.weight >= 0 and math.isfinite(control.weight), "must be >= 0")
        high = math.inf if name == "colorfulness" else 1.0
        _check(f"loss.{name}.target", 0 <= control.target <= high, f"must be in [0, {high}]")
    _check("loss.hue.target", lo.hue.target < 1, "is in turns and must be in [0, 1)")
    _validate_conditioning(cfg)
    _check("optim.lr_generator", o.lr_generator > 0, "must be > 0")
    _check("optim.lr_discriminator", o.lr_discriminator > 0, "must be > 0")
    _check("optim.beta1", 0 <= o.beta1 < 1, "must be in [0, 1)")
    _check("optim.beta2", 0 <= o.beta2 < 1, "must be in [0, 1)")
    _check("optim.schedule", o.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}")
    _check("optim.plateau_patience", o.plateau_patience >= 1, "must be >= 1")
    _check("optim.plateau_factor", 0 < o.plateau_factor < 1, "must be in (0, 1)")
    _check("optim.lr_decay_steps", o.lr_decay_steps >= 1, "must be >= 1")
    _check("train.epochs", t.epochs >= 1, "must be >= 1")
    _check("train.batch_size", t.batch_size >= 2, "must be >= 2 (BatchNorm)")
    _check("train.eval_batch_size", t.eval_batch_size >= 1, "must be >= 1")
    _check("train.batch_size_total", t.batch_size_total == 0 or t.batch_size_total >= 2,
           "must be 0 (batch_size × workers) or >= 2")
    _check("train.device", t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
           f"must be auto, cpu, cuda or cuda:N, got {t.device!r}")
    _check("train.precision", t.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}")
    _check("train.threads", t.threads >= 0, "must be >= 0")
    _check_interval("train.checkpoint_every", t.checkpoint_every)
    for key in ("cuda_graph", "fused_adam", "channels_last"):
        _check(f"train.{key}", getattr(t, key) in SWITCHES, f"must be one of {', '.join(SWITCHES)}")


def _check_interval(key: str, value: int | str) -> None:
    try:
        parse_interval(value, ("steps",), durations=True)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def _validate_adjusted(cfg: Config) -> None:
    """Issue 12's switches: adjusted ground truth, where the controls act, upsampling, U-Net."""
    lo = cfg.loss
    for key, value, allowed in (("loss.l1_target", lo.l1_target, L1_TARGETS),
                                ("loss.control_on", lo.control_on, CONTROL_ON),
                                ("model.upsample", cfg.model.upsample, UPSAMPLES),
                                ("model.output", cfg.model.output, OUTPUTS)):
        _check(key, value in allowed, f"must be one of {', '.join(allowed)}, got {value!r}")
    _check("loss.adversarial_weight", lo.adversarial_weight >= 0, "must be >= 0")
    _check("model.output", cfg.model.output != "projected" or lo.controlled() or lo.conditioned(),
           "projected needs a target: a loss.<statistic>.weight > 0 or a loss.<statistic>.range")
    _check("data.adjust_fraction", 0 <= cfg.data.adjust_fraction <= 1, "must be in [0, 1]")
    _check("train.fid_every", cfg.train.fid_every >= 0, "must be >= 0")
    _check("train.kid_every", cfg.train.kid_every >= 0, "must be >= 0")
    _check("train.kid_input_size", 75 <= cfg.train.kid_input_size <= 299, "must be in [75, 299] (Inception)")
    _check("train.realism_images", cfg.train.realism_images >= KID_MIN_IMAGES,
           f"must be >= {KID_MIN_IMAGES} (an unbiased KID needs two images per set)")


def _validate_conditioning(cfg: Config) -> None:
    m, lo = cfg.model, cfg.loss
    for key, value, allowed in (("model.conditioning", m.conditioning, CONDITIONINGS),
                                ("model.d_conditioning", m.d_conditioning, D_CONDITIONINGS)):
        _check(key, value in allowed, f"must be one of {', '.join(allowed)}, got {value!r}")
    for name, control in lo.conditioned().items():
        key, bounds, high = f"loss.{name}.range", list(control.range), math.inf if name == "colorfulness" else 1.0
        _check(key, len(bounds) == 2 and 0 <= bounds[0] < bounds[1] <= high,
               f"must be [low, high] with 0 <= low < high <= {high} (or empty), got {bounds}")
        _check(key, m.conditioning != "none", "a range conditions the generator: set model.conditioning=film")
    _check("model.conditioning", m.conditioning == "none" or lo.conditioned(), "film needs a loss.<statistic>.range")
    _check("model.d_conditioning", m.d_conditioning == "none" or m.conditioning != "none",
           "projection needs model.conditioning=film")
    _check("loss.condition.own_fraction", 0 <= lo.condition.own_fraction <= 1, "must be in [0, 1]")
    _check("loss.condition.drop", 0 <= lo.condition.drop < 1, "must be in [0, 1)")


class ConfigError(ValueError):
    """A bad configuration value; the message starts with the dotted key."""


def _coerce(key: str, value: object, kind: type) -> object:
    """Check one leaf value against its annotated type; ints are accepted for floats.

    Numeric strings such as '1e-4' are accepted for numbers: PyYAML reads them as strings.
    """
    if isinstance(kind, types.UnionType):         # int | str: the first arm that takes the value
        for arm in typing.get_args(kind):
            if isinstance(value, arm) and not isinstance(value, bool):
                return value
        names = " or ".join(arm.__name__ for arm in typing.get_args(kind))
        raise ConfigError(f"{key}: expected {names}, got {type(value).__name__} {value!r}")
    if typing.get_origin(kind) is tuple:          # a YAML list; None or '' = empty
        if value is None or value == "" or isinstance(value, (list, tuple)):
            return tuple(_coerce(f"{key}[{i}]", v, typing.get_args(kind)[0]) for i, v in enumerate(value or ()))
        raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
    if kind in (int, float) and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):        # YAML 1.1 reads on/off as booleans: the switches mean them
            return "on" if value else "off"
    type_name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{key}: expected {type_name}, got {type(value).__name__} {value!r}")


def build(cls: type, data: Mapping, prefix: str = "") -> object:
    """An instance of dataclass cls from nested plain data; unknown keys and wrong types raise."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for name, value in data.items():
        kind, key = hints[name], f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(kind):
            values[name] = build(kind, value, key)
        else:
            values[name] = _coerce(key, value, kind)
    return cls(**values)


def flatten(data: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested dict → {dotted.key: leaf}."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def parse_assignment(text: str) -> tuple[str, object]:
    """'model.width=0.25' → ('model.width', 0.25); the value is read as YAML (safe loader)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{text}: an override must look like key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{key.strip()}: cannot read value {raw!r}: {yaml_problem(err)}") from None
    return key.strip(), value


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message in one line, without its "<unicode string>" and source excerpt."""
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    return ": ".join(p for p in parts if p) or str(err).splitlines()[0]


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with the safe loader; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {yaml_problem(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def from_dict(data: Mapping) -> Config:
    """Build and validate a Config from nested plain data (missing keys take their defaults)."""
    cfg = build(Config, data)
    _validate(cfg)
    return cfg


def to_dict(cfg: object) -> dict:
    """Plain nested data; tuples become lists, as YAML and JSON give them back."""
    return dataclasses.asdict(cfg, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v
                                                               for k, v in items})


def leaf_keys() -> set[str]:
    """Every dotted key a Config has."""
    return set(flatten(to_dict(Config())))


def apply_overrides(cfg: Config, overrides: Mapping[str, object]) -> Config:
    """Return cfg with {dotted.key: value} replaced; unknown keys are errors."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        parts, node = dotted.split("."), data
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{'.'.join(parts[:i + 1])}: unknown key")
            if i == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise ConfigError(f"{dotted}: is a section, not a value")
                node[part] = value
            else:
                node = node[part]
    return from_dict(data)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Config from an optional YAML file plus 'dotted.key=value' overrides."""
    cfg = from_dict(read_yaml(path)) if path else from_dict({})
    return apply_overrides(cfg, dict(parse_assignment(o) for o in overrides))

