"""Where a sweep's MLflow store is, and creating it so that a kill at any moment leaves it usable.

MLflow creates and migrates a new sqlite store's tables on first use, in several steps; a SIGKILL
between them leaves `_alembic_tmp_runs` behind and every later open fails. So a new sqlite store is
built under a temp name beside the target and then linked into place (no-clobber: a store another
process made first wins). A half-built store that holds no runs (a kill during MLflow's own first
creation) is moved aside and rebuilt; one that holds runs is refused with one line, never touched.
Readers (`existing_store`) never create a store.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

SQLITE = "sqlite:///"
CREATION_LOCK = 0x636f6c6f72   # pg_advisory_lock's key for making tables ("color")


class StoreError(RuntimeError):
    """An MLflow store that cannot be used; the message is one line for the user."""


def resolve_tracking_uri(uri: str | None) -> str:
    """The given URI, else MLflow's default (env MLFLOW_TRACKING_URI honoured), with a relative
    sqlite path made absolute so a resume from another folder writes to the same store."""
    import mlflow
    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        uri = SQLITE + str(Path(uri[len(SQLITE):]).resolve())
    elif "://" not in uri:
        uri = str(Path(uri).resolve())
    elif uri.startswith("postgresql://"):   # as a provider writes it; SQLAlchemy's default driver is not installed
        uri = "postgresql+psycopg://" + uri[len("postgresql://"):]
    return uri


def without_password(uri: str) -> str:
    """The URI for files and messages: a database password shown as ***."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    try:
        parsed = make_url(uri)
    except ArgumentError:        # a plain folder
        return uri
    return parsed.render_as_string(hide_password=True) if parsed.password else uri


def sqlite_file(uri: str) -> Path | None:
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def existing_store(uri: str) -> str | None:
    """`uri` when its store is there (a database server counts as there), else None."""
    local = sqlite_file(uri) or (Path(uri.removeprefix("file://")) if "://" not in uri or
                                 uri.startswith("file://") else None)
    return uri if local is None or local.exists() else None


def _query(path: Path, sql: str) -> list[tuple]:
    # Read-write (never create): the first read of a store with a hot journal, left by a kill during
    # a write, rolls the journal back, which a read-only connection cannot do.
    with closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as db:
        return db.execute(sql).fetchall()


def _tables(path: Path) -> set[str]:
    return {row[0] for row in _query(path, "select name from sqlite_master where type = 'table'")}


def _half_built(path: Path) -> bool:
    tables = _tables(path)
    if any(name.startswith("_alembic_tmp") for name in tables) or "alembic_version" not in tables:
        return True
    return not _query(path, "select version_num from alembic_version")


def _holds_runs(path: Path) -> bool:
    return "runs" in _tables(path) and _query(path, "select count(*) from runs")[0][0] > 0


def _remove_dead_temps(path: Path) -> None:
    """Temp stores of builders that were killed (their pid is gone), with sqlite's side files
    (`.tmp-<pid>-journal`): the pid is the number right after `.tmp-`."""
    for temp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = temp.name.removeprefix(f".{path.name}.tmp-").split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            temp.unlink(missing_ok=True)
        except PermissionError:   # alive, someone else's
            pass


def _build(path: Path) -> None:
    from mlflow import MlflowClient
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(path)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.unlink(missing_ok=True)
    chatter = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in chatter]
    try:
        for logger in chatter:
            logger.setLevel(logging.WARNING)     # "Creating initial MLflow database tables..."
        MlflowClient(SQLITE + str(temp)).search_experiments(max_results=1)  # creates + migrates
        os.link(temp, path)
    except FileExistsError:   # another process built it first: use theirs
        pass
    finally:
        temp.unlink(missing_ok=True)
        for logger, level in zip(chatter, levels):
            logger.setLevel(level)


@contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """Held while tables are made in a PostgreSQL database: launchers started together would each
    find no tables and each CREATE them, and all but one fail (duplicate key in pg_type). A session
    advisory lock, so a killed holder's lock goes with its connection. Other databases: nothing."""
    import sqlalchemy as sa
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        yield
        return
    engine = sa.create_engine(parsed.set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as db:
            db.execute(sa.text("select pg_advisory_lock(:key)"), {"key": CREATION_LOCK})
            try:
                yield
            finally:
                db.execute(sa.text("select pg_advisory_unlock(:key)"), {"key": CREATION_LOCK})
    finally:
        engine.dispose()


def ensure_store(uri: str) -> None:
    """Make sure a sqlite store at `uri` exists whole; a database server's store gets MLflow's
    tables one launcher at a time; other stores are left to MLflow."""
    path = sqlite_file(uri)
    if path is None:
        if uri.startswith("postgresql"):
            from mlflow import MlflowClient
            with creation_lock(uri):
                MlflowClient(uri).search_experiments(max_results=1)      # creates + migrates
        return
    if path.exists() and _half_built(path):
        if _holds_runs(path):
            raise StoreError(f"{path}: MLflow store is half-migrated (a kill during `mlflow db upgrade`?) "
                             f"and holds runs; restore a backup or move it aside")
        aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        print(f"MLflow: {path} was half-created (a kill during its creation); moved to {aside}, rebuilt")
    if not path.exists():
        _build(path)
