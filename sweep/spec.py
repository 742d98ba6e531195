"""Sweep specs: `search_spaces/*.yaml` read into one frozen `SweepSpec`, checked before Ray starts.

A spec names the sweep, its base training config (nested `config:` plus dotted `overrides:`), the
search `space` (distributions over dotted config keys, checked against the config's own validation:
a negative λ bound fails here, naming the key), the `objectives`, the Optuna `sampler`, an optional ASHA
`scheduler`, and the sweep's size and pacing. Every error is a `SpecError` whose message starts with
the offending key. Path keys (`data.path`) are made absolute against the folder the command was
run from, once, here in the driver. No Ray, Optuna or MLflow here: `sweep/ray_adapter.py` turns the
spec into those.
"""
from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.pareto import DEFAULT_OBJECTIVES, MODES, Objective
from trainable.config import (Config, ConfigError, apply_overrides, flatten, from_dict, leaf_keys,
                              parse_assignment, read_yaml, to_dict)
from trainable.interval import Interval, duration_seconds, parse_interval
from trainable.names import SHARED_KEYS, metric_names_of

DISTRIBUTIONS = {  # type → the keys it takes
    "uniform": ("low", "high"), "loguniform": ("low", "high"), "int": ("low", "high", "log"),
    "choice": ("values",), "grid": ("values",), "fixed": ("value",),
}


class SpecError(ValueError):
    """A bad sweep spec; the message starts with the dotted key."""


@dataclass(frozen=True)
class Distribution:
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple = ()


def need(key: str, ok: bool, why: str) -> None:
    if not ok:
        raise SpecError(f"{key}: {why}")


def check_mapping(key: str, value: object, allowed) -> Mapping:
    need(key, isinstance(value, Mapping), f"expected a mapping, got {type(value).__name__}")
    for sub in value:
        need(f"{key}.{sub}", sub in allowed, f"unknown key (known: {', '.join(allowed)})")
    return value


def _number(key: str, value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    need(key, isinstance(value, (int, float)) and not isinstance(value, bool),
          f"expected a number, got {value!r}")
    return float(value)


def _distribution(key: str, raw: object) -> Distribution:
    need(key, isinstance(raw, Mapping) and "type" in raw, "expected a mapping with a 'type'")
    kind = raw["type"]
    need(f"{key}.type", kind in DISTRIBUTIONS,
          f"unknown distribution {kind!r} (known: {', '.join(DISTRIBUTIONS)})")
    check_mapping(key, raw, ("type",) + DISTRIBUTIONS[kind])
    for needed in DISTRIBUTIONS[kind]:
        need(f"{key}.{needed}", needed in raw or needed == "log", f"missing for type {kind}")
    if kind == "fixed":
        return Distribution(kind, values=(raw["value"],))
    if kind in ("choice", "grid"):
        values = raw["values"]
        need(f"{key}.values", isinstance(values, list) and len(values) > 0, "expected a non-empty list")
        return Distribution(kind, values=tuple(values))
    low, high = _number(f"{key}.low", raw["low"]), _number(f"{key}.high", raw["high"])
    need(f"{key}.low", low <= high, f"low {low} > high {high}")
    log = kind == "loguniform" or bool(raw.get("log", False))  # 'log' is optional for int only
    need(f"{key}.low", not log or low > 0, f"must be > 0 for a log scale, got {low}")
    if kind == "int":
        need(key, low.is_integer() and high.is_integer(), "int bounds must be whole numbers")
    return Distribution(kind, low=low, high=high, log=log)


def probe_values(dist: Distribution) -> list:
    """The values to try against the config's own validation."""
    if dist.kind in ("choice", "grid", "fixed"):
        return list(dist.values)
    if dist.kind == "int":
        return [int(dist.low), int(dist.high)]
    return [dist.low, dist.high]


def parse_space(raw: object, base: Config) -> tuple[dict[str, Distribution], Config]:
    need("space", isinstance(raw, Mapping) and len(raw) > 0, "expected a non-empty mapping")
    known, space, fixed = leaf_keys(), {}, {}
    for key, entry in raw.items():
        need(f"space.{key}", key in known, "not a config key (see trainable/config.py)")
        dist = _distribution(f"space.{key}", entry)
        for value in probe_values(dist):
            try:
                apply_overrides(base, {key: value})
            except ConfigError as err:
                raise SpecError(f"space.{err}") from None
        if dist.kind == "fixed":
            fixed[key] = dist.values[0]
        else:
            space[key] = dist
    need("space", len(space) > 0, "nothing to search: every entry is fixed")
    return space, config_error_to_spec(lambda: apply_overrides(base, fixed), "space.")


def config_error_to_spec(build, prefix: str):
    try:
        return build()
    except ConfigError as err:
        raise SpecError(f"{prefix}{err}") from None


def distribution_dict(dist: Distribution) -> dict:
    if dist.kind in ("choice", "grid"):
        return {"type": dist.kind, "values": list(dist.values)}
    entry = {"type": dist.kind, "low": dist.low, "high": dist.high}
    return {**entry, "log": dist.log} if dist.kind == "int" else entry


def probe_config(base: Config, space: Mapping[str, Distribution]) -> Config:
    """A trial config with every searched key at its last probe value (weights > 0), so the
    metrics a trial will report (control errors appear only for weighted statistics) are known."""
    return apply_overrides(base, {key: probe_values(d)[-1] for key, d in space.items()})


TOP_KEYS = ("name", "config", "overrides", "space", "objectives", "sampler", "scheduler",
            "num_samples", "max_concurrent", "report_every", "time_budget", "pack", "lease")
SAMPLERS = ("tpe", "nsga2", "cmaes", "random", "grid")
SCHEDULERS = ("none", "asha")
MAX_CONCURRENT_DEFAULT = 10
LEASE_DEFAULT_S = 600.0               # a running trial without a heartbeat this long may be taken over
# Config keys holding a path: resolved once, in the driver, against the folder the command was run
# from (a Ray trial runs in a folder of its own, where a relative path means something else).
PATH_KEYS = ("data.path",)
# Changing these between runs of one sweep is allowed; every other difference is refused.
RESUMABLE_CHANGES = ("time_budget", "lease")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    config: Config                          # base config, `fixed` entries applied
    space: Mapping[str, Distribution]       # searched dotted keys only
    objectives: tuple[Objective, ...]
    sampler: str
    seed: int | None
    scheduler: str
    grace_period: int                       # ASHA: reports before a trial may be stopped
    num_samples: int
    max_concurrent: int
    report_every: Interval                  # epochs (an integer) or steps ('500 steps') between reports
    time_budget_s: float | None
    pack: int                               # trials stepped together on one device (1 = off)
    lease_s: float = LEASE_DEFAULT_S        # docs/study.md: several machines, leases

    def trial_config(self, searched: Mapping[str, object]) -> Config:
        """The full config of one trial: the base config plus its searched values."""
        return apply_overrides(self.config, dict(searched))

    def num_reports(self, train_images: int | None = None) -> int:
        """Reports of a whole trial (ASHA's max_t). Counted in steps it depends on the data: then
        `train_images` (the training split, an upper bound) at the smallest searched batch size."""
        epochs = self.config.train.epochs
        if self.report_every.epochs:
            return math.ceil(epochs / self.report_every.epochs)
        if train_images is None:
            raise ValueError("report_every counts steps: the number of reports needs the training images")
        batch = self.config.train.batch_size
        searched = self.space.get("train.batch_size")
        if searched is not None:
            batch = min(searched.values) if searched.values else searched.low
        steps = max(1, int(train_images) // max(1, int(batch)))
        return math.ceil(epochs * steps / self.report_every.steps)


def _int(key: str, value: object, low: int) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    need(key, ok, f"must be an integer >= {low}, got {value!r}")
    return value


def parse_duration(key: str, value: object) -> float | None:
    """'11h30m' / '90m' / '45s' / 3600 → seconds; None or 0 means no budget."""
    if value is None or value == 0:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    seconds = duration_seconds(value)
    need(key, seconds is not None, f"expected a duration like 11h30m, got {value!r}")
    return seconds or None      # "0h" is no budget too


def _report_every(raw: object, pack: object) -> Interval:
    """An integer counts epochs; '500 steps' reports inside epochs (not packed: packs step together
    and stop at epoch ends)."""
    try:
        interval = parse_interval(raw, ("epochs", "steps"), durations=False)
    except ValueError as err:
        raise SpecError(f"report_every: {err}") from None
    need("report_every", bool(interval), "must be >= 1")
    need("report_every", not interval.steps or pack in (None, 1),
         "packed trials report at epoch ends: use an integer (epochs), or pack: 1")
    return interval


def _pack(raw: object, space: Mapping[str, Distribution], max_concurrent: int, cfg: Config) -> int:
    """Packed trials share one model layout, batch and data: those keys cannot be searched."""
    pack = _int("pack", 1 if raw is None else raw, 1)
    need("pack", pack <= max_concurrent, f"must be <= max_concurrent ({max_concurrent}), got {pack}")
    if pack > 1:
        need("config.train.precision", cfg.train.precision != "fp16",
             "fp16 cannot be packed (a packed step has no loss scaler); use bf16, or pack: 1")
        for key in space:
            shared = [k for k in SHARED_KEYS if key == k or key.startswith(f"{k}.")]
            need(f"space.{key}", not shared, f"cannot be searched with pack > 1 (trials in one pack "
                 f"share {', '.join(SHARED_KEYS)}); search it with pack: 1")
    return pack


def _objectives(raw: object, cfg: Config) -> tuple[Objective, ...]:
    if raw is None:
        raw = [{"metric": o.metric, "mode": o.mode} for o in DEFAULT_OBJECTIVES]
    need("objectives", isinstance(raw, list) and len(raw) > 0, "expected a non-empty list")
    reported = set(metric_names_of(cfg))
    objectives = []
    for i, entry in enumerate(raw):
        key = f"objectives[{i}]"
        check_mapping(key, entry, ("metric", "mode"))
        metric, mode = entry.get("metric"), entry.get("mode", "min")
        need(f"{key}.metric", metric != "val_kid_controlled" or cfg.train.kid_every > 0,
             "val_kid_controlled needs config.train.kid_every >= 1 (epochs between KID evaluations)")
        need(f"{key}.metric", metric in reported,
              f"the trainer does not report {metric!r} (it reports: {', '.join(sorted(reported))})")
        need(f"{key}.mode", mode in MODES, f"must be min or max, got {mode!r}")
        objectives.append(Objective(metric, mode))
    need("objectives", len({o.metric for o in objectives}) == len(objectives), "a metric is listed twice")
    return tuple(objectives)


def _sampler(raw: object, space: Mapping[str, Distribution], objectives) -> tuple[str, int | None]:
    raw = {"type": raw} if isinstance(raw, str) or raw is None else raw
    check_mapping("sampler", raw, ("type", "seed"))
    kind, seed = raw.get("type") or "tpe", raw.get("seed")
    need("sampler.type", kind in SAMPLERS, f"unknown sampler {kind!r} (known: {', '.join(SAMPLERS)})")
    if seed is not None:
        _int("sampler.seed", seed, 0)
    if kind == "cmaes":
        need("sampler.type", len(objectives) == 1, "cmaes optimizes a single objective")
    grids = [k for k, d in space.items() if d.kind == "grid"]
    if kind == "grid":
        others = [k for k, d in space.items() if d.kind not in ("grid", "choice")]
        need(f"space.{others[0]}" if others else "space", not others, "sampler grid needs grid or choice values")
    else:
        need(f"space.{grids[0]}" if grids else "space", not grids, "type grid needs 'sampler: grid'")
    return kind, seed


def _scheduler(raw: object) -> tuple[str, int]:
    raw = {"type": raw} if isinstance(raw, str) or raw is None else raw
    check_mapping("scheduler", raw, ("type", "grace_period"))
    kind = raw.get("type") or "none"
    need("scheduler.type", kind in SCHEDULERS, f"unknown scheduler {kind!r} (known: none, asha)")
    return kind, _int("scheduler.grace_period", raw.get("grace_period", 1), 1)


def _base_config(raw: Mapping) -> Config:
    overrides = raw.get("overrides") or {}
    need("overrides", isinstance(overrides, Mapping) and all(isinstance(k, str) for k in overrides),
         "expected a mapping of dotted keys")
    base = config_error_to_spec(lambda: from_dict(raw.get("config") or {}), "config.")
    return config_error_to_spec(lambda: apply_overrides(base, overrides), "overrides.")


def _set_override(raw: dict, assignment: str) -> None:
    """One `--set key=value`: a sweep-level key (num_samples, sampler.seed …) or a config key."""
    try:
        key, value = parse_assignment(assignment)
    except ConfigError as err:
        raise SpecError(f"--set {err}") from None
    head, _, rest = key.partition(".")
    if head in TOP_KEYS and head not in ("config", "overrides", "space"):
        if rest:
            section = raw.get(head)
            section = {"type": section} if isinstance(section, str) or section is None else dict(section)
            section[rest] = value
            raw[head] = section
        else:
            raw[head] = value
    else:
        raw["overrides"] = {**(raw.get("overrides") or {}), key: value}


def absolute_path(value: object, base: Path) -> object:
    """A non-empty relative path as an absolute one under base (`~` expanded); anything else as is."""
    if not isinstance(value, str) or not value:
        return value
    return os.path.normpath(Path(base, Path(value).expanduser()))


def _resolve_paths(config: Config, base: Path) -> Config:
    values = flatten(to_dict(config))
    return apply_overrides(config, {key: absolute_path(values[key], base) for key in PATH_KEYS})


def comparable(saved: Mapping, base: Path | None = None) -> dict:
    """A saved resolved spec as today's code resolves it, for the resume check: config keys added
    since it was saved take their defaults, and a relative path key is made absolute (sweeps saved
    `data.path: ./dataset/cifar10`); so only real changes are refused."""
    base = Path.cwd() if base is None else base
    config = copy.deepcopy(saved.get("config") or {})
    try:
        config = to_dict(from_dict(config))
    except ConfigError:           # a key since removed or renamed: the comparison names it
        pass
    for key in PATH_KEYS:
        *sections, leaf = key.split(".")
        node = config
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = absolute_path(node[leaf], base)
    return {**saved, "config": config}


def parse_spec(raw: Mapping, sets: Sequence[str] = (), base: Path | None = None) -> SweepSpec:
    """Check and resolve a spec from plain data plus `--set` assignments; relative paths are made
    absolute against base (default: the current folder)."""
    raw = dict(raw)
    for assignment in sets:
        _set_override(raw, assignment)
    for key in raw:
        need(str(key), key in TOP_KEYS, f"unknown key (known: {', '.join(TOP_KEYS)})")
    name = raw.get("name")
    need("name", isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", name or "") is not None,
          "expected a folder-safe name (letters, digits, _ . -)")
    base_config = _resolve_paths(_base_config(raw), Path.cwd() if base is None else base)
    space, config = parse_space(raw.get("space"), base_config)
    objectives = _objectives(raw.get("objectives"), probe_config(config, space))
    sampler, seed = _sampler(raw.get("sampler"), space, objectives)
    scheduler, grace_period = _scheduler(raw.get("scheduler"))
    num_samples = _int("num_samples", raw.get("num_samples", 10), 1)
    default_concurrent = min(MAX_CONCURRENT_DEFAULT, num_samples)
    max_concurrent = _int("max_concurrent", raw.get("max_concurrent", default_concurrent), 1)
    return SweepSpec(
        name=name, config=config, space=space, objectives=objectives, sampler=sampler, seed=seed,
        scheduler=scheduler, grace_period=grace_period, num_samples=num_samples,
        max_concurrent=max_concurrent,
        report_every=_report_every(raw.get("report_every", 1), raw.get("pack")),
        time_budget_s=parse_duration("time_budget", raw.get("time_budget")),
        pack=_pack(raw.get("pack"), space, max_concurrent, config),
        lease_s=parse_duration("lease", raw.get("lease")) or LEASE_DEFAULT_S,
    )


def load_spec(path: str | Path, sets: Sequence[str] = ()) -> SweepSpec:
    """Read a spec file (safe YAML loader) and resolve it."""
    try:
        raw = read_yaml(path)
    except ConfigError as err:
        raise SpecError(str(err)) from None
    return parse_spec(raw, sets)


def resolved(spec: SweepSpec) -> dict:
    """The spec as plain data with every default filled in (saved next to the sweep). `pack` and
    `lease` are written only when not their defaults, so sweeps saved before they existed still
    match and resume."""
    packing = {"pack": spec.pack} if spec.pack > 1 else {}
    leasing = {"lease": spec.lease_s} if spec.lease_s != LEASE_DEFAULT_S else {}
    return {
        "name": spec.name,
        "config": to_dict(spec.config),
        "space": {key: distribution_dict(d) for key, d in spec.space.items()},
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in spec.objectives],
        "sampler": {"type": spec.sampler, "seed": spec.seed},
        "scheduler": {"type": spec.scheduler, "grace_period": spec.grace_period},
        "num_samples": spec.num_samples,
        "max_concurrent": spec.max_concurrent,
        "report_every": spec.report_every.epochs or f"{spec.report_every.steps} steps",
        "time_budget": spec.time_budget_s,
        **packing,
        **leasing,
    }


def incompatibility(saved: Mapping, current: Mapping, prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two resolved specs, as a sentence."""
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if dotted in RESUMABLE_CHANGES:
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            found = incompatibility(old, new, f"{dotted}.")
            if found:
                return found
        elif old != new:
            return f"{dotted} was {old!r}, now {new!r}"
    return None
