"""The sweep's Optuna study, in a storage colorsweep owns: by default an SQLite file in the sweep
folder (`study.db`), or the database `--study-storage URL` names (postgresql://user:pass@host/db as
a provider hands it out). The study is named after the sweep and holds the resolved spec it was
made by, so a study made by another spec is refused naming the key, before Ray starts.

Optuna and SQLAlchemy only (no Ray): `sweep/ray_adapter.py` asks and tells the study through
`StudySearcher`; `sweep/dashboard.py` opens it in optuna-dashboard.
"""
from __future__ import annotations

import json
import warnings
from contextlib import nullcontext
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from analysis.store import creation_lock
from sweep.spec import SpecError, SweepSpec, comparable, incompatibility, resolved
from trainable.layout import STUDY_DB

SCHEMES = ("sqlite", "postgresql")
# Keys of the spec each machine may set for itself: where its data is, how many trials its device
# runs at once and packs, its time budget. Every other key must be the study's own.
MACHINE_KEYS = ("config.data.path", "max_concurrent", "pack", "time_budget")
SPEC_ATTR = "colorsweep_spec"
CONNECT_TIMEOUT_S = 10


class StudyError(SpecError):
    """A study storage that cannot be used; one line naming it (bad input: exit 2)."""


def study_url(given: str | None, sweep_dir: Path) -> str:
    return given or f"sqlite:///{Path(sweep_dir) / STUDY_DB}"


def shown(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def database_url(url: str) -> str:
    """The URL SQLAlchemy is given: a provider's postgresql:// names no driver, and SQLAlchemy's
    default driver differs between versions (psycopg2 before 2.1); colorsweep depends on psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def engine_kwargs(url: str) -> dict:
    if make_url(url).get_backend_name() == "postgresql":
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    return {}


def check_scheme(url: str) -> None:
    try:
        backend = make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        raise StudyError(f"--study-storage {url!r}: not a database URL (e.g. postgresql://user:pass@host:5432/db)") from None
    if backend not in SCHEMES:
        raise StudyError(f"--study-storage {shown(url)}: scheme '{backend}' is not supported "
                         f"(supported: {', '.join(s + '://' for s in SCHEMES)})")


def check_connection(url: str) -> bool:
    """The database answers → whether it holds Optuna's tables. Reads only: no table or file is made."""
    check_scheme(url)
    if make_url(url).get_backend_name() == "sqlite" and not Path(make_url(url).database or "").exists():
        return False
    engine = sqlalchemy.create_engine(database_url(url), **engine_kwargs(url))
    try:
        with engine.connect():
            pass
        return sqlalchemy.inspect(engine).has_table("studies")
    except sqlalchemy.exc.SQLAlchemyError as err:
        first = (str(getattr(err, "orig", None) or err).strip().splitlines() or [type(err).__name__])[0]
        raise StudyError(f"--study-storage {shown(url)}: cannot connect: {first}") from None
    finally:
        engine.dispose()


def check_study(url: str, spec: SweepSpec, compare: bool = True) -> None:
    """Before anything is made: the database answers, and (`compare`) a study of this name there
    was made by this spec. Reads only: no table, study or file is created."""
    if not check_connection(url) or not compare:
        return
    saved = _saved_spec(url, spec.name)
    changed = saved is not None and incompatibility(study_form(comparable(saved)), study_form(resolved(spec)))
    if changed:
        raise StudyError(f"--study-storage {shown(url)}: study '{spec.name}' was made by another spec: "
                         f"{changed}; use that spec, or --fresh to move the old study aside")


def study_form(resolved_spec: dict) -> dict:
    """A resolved spec without the keys each machine sets for itself (MACHINE_KEYS): what every
    launcher joining a study must agree on."""
    form = json.loads(json.dumps(resolved_spec))
    for dotted in MACHINE_KEYS:
        *sections, leaf = dotted.split(".")
        node = form
        for section in sections:
            node = node.get(section) or {}
        node.pop(leaf, None)
    return form


def is_remote(url: str) -> bool:
    """A database other machines can reach (the default study.db is a file in the sweep folder)."""
    return make_url(url).get_backend_name() != "sqlite"


def _storage(url: str, create: bool) -> optuna.storages.RDBStorage:
    with creation_lock(database_url(url)) if create else nullcontext():   # launchers starting together
        return optuna.storages.RDBStorage(database_url(url), engine_kwargs=engine_kwargs(url),
                                          skip_table_creation=not create)


def _saved_spec(url: str, name: str) -> dict | None:
    storage = _storage(url, create=False)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    finally:
        storage.remove_session()
    raw = study.user_attrs.get(SPEC_ATTR)
    return json.loads(raw) if raw else None


def open_study(url: str, spec: SweepSpec, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """The sweep's study, made on the first call with the spec's directions and the spec itself."""
    study = optuna.create_study(storage=_storage(url, create=True), sampler=sampler, study_name=spec.name,
                                directions=[o.direction for o in spec.objectives], load_if_exists=True)
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, json.dumps(resolved(spec)))
        with warnings.catch_warnings():       # experimental in Optuna; the dashboard's axes then name the metrics
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.metric for o in spec.objectives])
    return study


def move_study_aside(url: str, name: str, new_name: str) -> bool:
    """--fresh on a shared database: the old study is copied to `new_name`, then deleted; never lost.
    (The default SQLite file moves with the sweep folder.)"""
    if make_url(url).get_backend_name() == "sqlite":
        return False
    storage = _storage(url, create=False)
    try:
        if name not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
            return False
        optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage, to_study_name=new_name)
        optuna.delete_study(study_name=name, storage=storage)
        return True
    except sqlalchemy.exc.OperationalError:      # no tables yet: nothing to move
        return False
