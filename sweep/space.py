"""The `space:` section of a sweep spec: distributions over dotted config keys, checked against the
config's own validation (a negative λ bound fails here, naming the key)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from trainable.config import Config, ConfigError, apply_overrides, leaf_keys

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
