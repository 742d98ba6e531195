"""colorsweep's own rows in the study's database, beside Optuna's tables: a lease per running trial
(which launcher runs it, its last heartbeat, where that launcher keeps its Tune trials) and the
sweep's one MLflow parent run per tracking store.

Tables of our own rather than Optuna trial attributes: taking a lapsed trial must be one conditional
UPDATE whose row count says who won (a compare-and-set on `generation`), which needs typed columns
to compare; Optuna keeps attributes as JSON text in tables whose layout is its own business. In
PostgreSQL a second UPDATE of the same row waits for the first to commit and then re-checks its
WHERE clause, so it matches nothing; SQLite runs one write transaction at a time. Heartbeats are
the launchers' clocks (time.time()): machines on NTP agree to far better than a lease.

SQLAlchemy only (no Ray, no Optuna, no MLflow).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from analysis.store import creation_lock
from sweep.study import database_url, engine_kwargs, shown

METADATA = sa.MetaData()
LEASES = sa.Table(
    "colorsweep_leases", METADATA,
    sa.Column("trial_id", sa.Integer, primary_key=True),       # Optuna's storage trial id
    sa.Column("launcher", sa.String(200), nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),          # the holder's time.time()
    sa.Column("generation", sa.Integer, nullable=False),       # +1 at every change of holder
    sa.Column("folder", sa.Text, nullable=False),              # the holder's sweep folder
    sa.Column("tune_trial_id", sa.String(100), nullable=False),
)
PARENT_RUNS = sa.Table(
    "colorsweep_parent_runs", METADATA,
    sa.Column("study_id", sa.Integer, primary_key=True),
    sa.Column("tracking_uri", sa.String(1000), primary_key=True),   # without its password
    sa.Column("run_id", sa.String(64), nullable=False),
)


@dataclass(frozen=True)
class Lease:
    trial_id: int
    launcher: str
    heartbeat: float
    generation: int
    folder: str
    tune_trial_id: str


def _engine(url: str) -> sa.engine.Engine:
    engine = sa.create_engine(database_url(url), **engine_kwargs(url))
    with creation_lock(database_url(url)):
        METADATA.create_all(engine)       # checkfirst: each table only when missing
    return engine


class Leases:
    """The leases of one launcher (`launcher`, whose Tune trials are in `folder`) on a study's
    database; `lease_s` without a heartbeat and a trial may be taken by another launcher. `shared`:
    other launchers may join this study (a database server's)."""

    def __init__(self, url: str, launcher: str, folder: str, lease_s: float, shared: bool = True):
        self.launcher, self.folder, self.lease_s, self.shared = launcher, folder, lease_s, shared
        self.engine = _engine(url)
        self._beating: threading.Event | None = None

    def take(self, trial_id: int, tune_trial_id: str) -> None:
        """A trial this launcher just asked for."""
        with self.engine.begin() as db:
            db.execute(LEASES.delete().where(LEASES.c.trial_id == trial_id))
            db.execute(LEASES.insert().values(trial_id=trial_id, launcher=self.launcher, heartbeat=time.time(),
                                              generation=0, folder=self.folder, tune_trial_id=tune_trial_id))

    def beat(self, trial_id: int | None = None) -> int:
        """Renew this launcher's lease on `trial_id` (all of its leases when None) → rows renewed."""
        query = LEASES.update().where(LEASES.c.launcher == self.launcher).values(heartbeat=time.time())
        if trial_id is not None:
            query = query.where(LEASES.c.trial_id == trial_id)
        with self.engine.begin() as db:
            return db.execute(query).rowcount

    def release(self, trial_id: int) -> None:
        with self.engine.begin() as db:
            db.execute(LEASES.delete().where(LEASES.c.trial_id == trial_id, LEASES.c.launcher == self.launcher))

    def held(self, trial_ids: list[int]) -> dict[int, Lease]:
        if not trial_ids:
            return {}
        with self.engine.connect() as db:
            rows = db.execute(sa.select(LEASES).where(LEASES.c.trial_id.in_(trial_ids))).all()
        return {row.trial_id: Lease(**row._mapping) for row in rows}

    def lapsed(self, lease: Lease | None, started: float | None) -> bool:
        """Whether a RUNNING trial may be taken: its holder is this launcher (an earlier run of it,
        killed), or its heartbeat is older than the lease; one with no lease row (its launcher died
        between the ask and the lease) at once when the study is not `shared` (the only launcher
        is this one), else once it started longer ago than the lease."""
        cutoff = time.time() - self.lease_s
        if lease is None:
            return not self.shared or (started is not None and started < cutoff)
        return lease.launcher == self.launcher or lease.heartbeat < cutoff

    def claim(self, trial_id: int, lease: Lease | None, tune_trial_id: str) -> bool:
        """Take a lapsed trial; True for exactly one launcher however many try at once."""
        mine = {"launcher": self.launcher, "heartbeat": time.time(), "folder": self.folder,
                "tune_trial_id": tune_trial_id}
        with self.engine.begin() as db:
            if lease is None:
                try:
                    with db.begin_nested():
                        db.execute(LEASES.insert().values(trial_id=trial_id, generation=0, **mine))
                    return True
                except sa.exc.IntegrityError:       # another launcher inserted it first
                    return False
            still = LEASES.c.launcher == self.launcher if lease.launcher == self.launcher else \
                LEASES.c.heartbeat < time.time() - self.lease_s
            done = db.execute(LEASES.update().where(LEASES.c.trial_id == trial_id,
                                                    LEASES.c.generation == lease.generation, still)
                              .values(generation=lease.generation + 1, **mine))
            return done.rowcount == 1

    def keep_alive(self) -> None:
        """Renew this launcher's leases every quarter lease from a daemon thread, so a trial whose
        first report is slower than the lease is not taken from a live launcher. It dies with the
        process: a SIGKILLed launcher's leases lapse."""
        if self._beating is not None:
            return
        self._beating = threading.Event()
        threading.Thread(target=self._beat_until_closed, daemon=True, name="colorsweep-leases").start()

    def _beat_until_closed(self) -> None:
        while not self._beating.wait(self.lease_s / 4):
            try:
                self.beat()
            except sa.exc.SQLAlchemyError:   # a database hiccup: the next beat tries again
                pass

    def close(self) -> None:
        if self._beating is not None:
            self._beating.set()
        self.engine.dispose()


def parent_run(url: str, study_id: int, tracking_uri: str, candidate: str) -> str:
    """The sweep's MLflow parent run in `tracking_uri`: the one recorded first for this study, else
    `candidate` (now recorded). Two launchers racing both get the first one's run."""
    engine = _engine(url)
    key = {"study_id": study_id, "tracking_uri": shown(tracking_uri)}
    try:
        with engine.begin() as db:
            try:
                with db.begin_nested():
                    db.execute(PARENT_RUNS.insert().values(run_id=candidate, **key))
                return candidate
            except sa.exc.IntegrityError:
                pass
            return db.execute(sa.select(PARENT_RUNS.c.run_id).where(
                PARENT_RUNS.c.study_id == study_id, PARENT_RUNS.c.tracking_uri == key["tracking_uri"])).scalar_one()
    finally:
        engine.dispose()


def recorded_parent(url: str, study_id: int, tracking_uri: str) -> str | None:
    engine = _engine(url)
    try:
        with engine.connect() as db:
            return db.execute(sa.select(PARENT_RUNS.c.run_id).where(
                PARENT_RUNS.c.study_id == study_id,
                PARENT_RUNS.c.tracking_uri == shown(tracking_uri))).scalar_one_or_none()
    finally:
        engine.dispose()
