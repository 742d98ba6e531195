"""`python -m sweep.dashboard SWEEP_OR_URL`: optuna-dashboard on 127.0.0.1 for a sweep's study.

SWEEP_OR_URL is a sweep folder (its `study.db`) or the database URL given to `--study-storage`
(postgresql://user:pass@host:5432/db). The dashboard shows every study in that database; the
sweep's is named after the sweep. Serves until Ctrl+C.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sweep.study import StudyError, check_connection, database_url, shown, study_url
from trainable import layout
from trainable.config import ConfigError

HOST = "127.0.0.1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweep.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("target", metavar="SWEEP_OR_URL", help="a sweep folder, or the --study-storage URL")
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (default 8080)")
    return parser


def storage_of(target: str) -> str:
    """The study's database URL for a sweep folder or a URL; StudyError names what is missing."""
    if "://" in target:
        return target
    folder = Path(target).expanduser().resolve()
    if (folder / layout.STUDY_DB).exists():
        return study_url(None, folder)
    try:
        state = layout.read_state(folder)
    except ConfigError as err:
        raise StudyError(str(err)) from None
    if state is not None and state.study_storage:
        raise StudyError(f"{folder}: its study is in {state.study_storage}; pass that URL (with its password)")
    raise StudyError(f"{folder}: no sweep study here (no {layout.STUDY_DB}); give a sweep folder or a database URL")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        url = storage_of(args.target)
        if not check_connection(url):
            raise StudyError(f"{shown(url)}: no Optuna study there yet")
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from optuna_dashboard import run_server
    print(f"optuna-dashboard for {shown(url)}: http://{HOST}:{args.port}/dashboard/ (Ctrl+C to stop)", flush=True)
    try:
        run_server(database_url(url), host=HOST, port=args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
