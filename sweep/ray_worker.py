"""Set up every Ray worker process of a sweep: `ray.init(runtime_env=RUNTIME_ENV)`.

Stdlib only: Ray imports this module in each worker before any trial code runs.
"""
import sys

RUNTIME_ENV = {"worker_process_setup_hook": "sweep.ray_worker.setup"}


def setup() -> None:
    """Tune ends a trial by removing its placement group; the raylet then sends the actor SIGTERM,
    and SIGKILL soon after. Ray's handler raises SystemExit, and when that lands inside a finalizer
    Python prints "Exception ignored ... SystemExit: 1", which Ray forwards to the launcher's
    terminal. That is the expected end of a trial, so print nothing for it; report the rest."""
    sys.unraisablehook = quiet_system_exit


def quiet_system_exit(unraisable) -> None:
    if not issubclass(unraisable.exc_type, SystemExit):
        sys.__unraisablehook__(unraisable)
