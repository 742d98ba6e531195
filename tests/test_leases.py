"""Leases on running trials and the sweep's one MLflow parent run (sweep/leases.py), on a real SQLite
file and a real PostgreSQL server: a lapsed trial is won by exactly one of several launchers trying
at once, a launcher takes its own trials back without waiting, a live lease is never taken."""
from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from sweep.leases import LEASES, Leases, parent_run, recorded_parent
from sweep.study import database_url

LEASE_S = 600.0


def _lapse(leases: Leases, trial_id: int) -> None:
    """As if the holder stopped beating long ago (a SIGKILLed launcher)."""
    with leases.engine.begin() as db:
        db.execute(LEASES.update().where(LEASES.c.trial_id == trial_id).values(heartbeat=0.0))


def _race(url: str, trial_id: int, launchers: int) -> list[str]:
    """`launchers` launchers claim the same trial at once (a barrier lines them up) → the winners."""
    contenders = [Leases(url, f"l{k}", f"/sweeps/l{k}", LEASE_S) for k in range(launchers)]
    seen = [c.held([trial_id]).get(trial_id) for c in contenders]
    barrier, won = threading.Barrier(launchers), []

    def claim(k: int) -> None:
        barrier.wait()
        if contenders[k].claim(trial_id, seen[k], f"tune{k}"):
            won.append(contenders[k].launcher)
    threads = [threading.Thread(target=claim, args=(k,)) for k in range(launchers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for contender in contenders:
        contender.close()
    return won


def _check_leases(url: str) -> None:
    first = Leases(url, "a", "/sweeps/a", LEASE_S)
    first.take(7, "tune-a")
    other = Leases(url, "b", "/sweeps/b", LEASE_S)
    held = other.held([7])[7]
    assert (held.launcher, held.folder, held.tune_trial_id) == ("a", "/sweeps/a", "tune-a")
    assert not other.lapsed(held, None) and not other.claim(7, held, "tune-b")     # live: not taken
    assert first.lapsed(held, None)            # its own launcher, relaunched: at once
    _lapse(first, 7)
    assert first.beat(7) == 1                  # a heartbeat renews it again
    _lapse(first, 7)
    assert _race(url, 7, 4) in (["l0"], ["l1"], ["l2"], ["l3"])
    winner = other.held([7])[7]
    assert winner.generation == 1 and first.beat(7) == 0    # the old holder's beats no longer count
    assert not other.lapsed(None, started=None)       # shared: a fresh ask may not hold its lease yet
    alone = Leases(url, "c", "/sweeps/c", LEASE_S, shared=False)
    assert alone.lapsed(None, started=None)    # the only launcher: a trial a kill left without a lease, at once
    alone.close()
    assert len(_race(url, 8, 4)) == 1          # no lease row at all (killed between ask and lease)
    first.release(7)
    assert 7 in other.held([7])                # only the holder releases
    first.close()
    other.close()


def _check_parent(url: str) -> None:
    assert recorded_parent(url, 1, "sqlite:////m.db") is None
    assert parent_run(url, 1, "sqlite:////m.db", "run-a") == "run-a"
    assert parent_run(url, 1, "sqlite:////m.db", "run-b") == "run-a"       # the loser gets the first
    assert parent_run(url, 1, "http://other:5000", "run-c") == "run-c"      # another store: its own
    assert recorded_parent(url, 1, "sqlite:////m.db") == "run-a"


def test_leases_on_sqlite(tmp_path):
    _check_leases(f"sqlite:///{tmp_path / 'study.db'}")
    _check_parent(f"sqlite:///{tmp_path / 'study.db'}")


@pytest.mark.integration
@pytest.mark.slow
def test_leases_on_postgres(postgres_url):
    _check_leases(postgres_url)
    _check_parent(postgres_url)
    engine = sa.create_engine(database_url(postgres_url))
    try:
        assert {"colorsweep_leases", "colorsweep_parent_runs"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
