"""Fixtures shared by the tests (the plain helpers they use are in tests/helpers.py), and the marker
rule: tests marked `gpu` run only when the -m expression names gpu (`pytest -m gpu`), so
`pytest -m "not slow"` skips them as plain `pytest` does."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import make_smoke_sweep


def pytest_collection_modifyitems(config, items):
    if "gpu" in (config.option.markexpr or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_sweep_dir(tmp_path_factory) -> Path:
    """`sweeps/smoke` of one real smoke launch per test session, shared by the analysis, final and
    Colab tests; `.parents[1]` holds `sweeps/` and `mlflow.db`."""
    return make_smoke_sweep(tmp_path_factory.getbasetemp() / "analysis_smoke")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (a free port, a temp folder, a password for TCP
    logins) for the session → its URL without the database, as a provider writes it. As root the
    server runs as the `postgres` user: PostgreSQL refuses to run as root."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not on PATH (apt-get install postgresql)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="colorsweep-pg-"))
    password, port = secrets.token_hex(8), _free_port()
    (folder / "password").write_text(password)
    if as_postgres:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "password", "postgres")
    def run(*command: str) -> None:
        subprocess.run([*as_postgres, *command], check=True, capture_output=True, timeout=120)
    run("initdb", "-D", str(folder / "data"), "-U", "postgres", "--auth-local=trust",
        "--auth-host=scram-sha-256", f"--pwfile={folder / 'password'}")
    run("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w", "start",
        "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=1000")
    try:
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}"
    finally:
        run("pg_ctl", "-D", str(folder / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server: str) -> str:
    """A new, empty database on `server` → its URL (postgresql://user:pass@host:port/db)."""
    import psycopg
    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"


@pytest.fixture
def postgres_url(postgres_server) -> str:
    return new_database(postgres_server)


@pytest.fixture
def mlflow_postgres_url(postgres_server) -> str:
    """A second database for MLflow's tables (Optuna's and MLflow's both keep an alembic_version)."""
    return new_database(postgres_server)
