"""The sweep's Ray workers end quietly: when Tune ends a trial the raylet SIGTERMs its process, and
Ray's handler can raise SystemExit inside a finalizer, which Python prints and Ray forwards to the
launcher's terminal (seen in CI). Other errors in finalizers still show."""
from __future__ import annotations

import subprocess
import sys

from sweep.ray_worker import RUNTIME_ENV
from tests.helpers import ROOT, wait_until

FINALIZERS_RAISE = """
import weakref
class Thing:
    pass
for error in (SystemExit(1), ValueError("from a finalizer")):
    def callback(ref, error=error):
        raise error
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
"""


def test_setup_drops_system_exit_from_finalizers_and_keeps_the_rest():
    plain = subprocess.run([sys.executable, "-c", FINALIZERS_RAISE], capture_output=True, text=True)
    assert "SystemExit" in plain.stderr and "ValueError: from a finalizer" in plain.stderr
    quiet = subprocess.run([sys.executable, "-c", "import sweep.ray_worker as w; w.setup()\n" + FINALIZERS_RAISE],
                           capture_output=True, text=True)
    assert quiet.returncode == 0 and "ValueError: from a finalizer" in quiet.stderr
    assert "SystemExit" not in quiet.stderr, quiet.stderr


def test_real_ray_workers_run_the_setup_hook(capfd, monkeypatch):
    """One worker raises both, in order, so the ValueError's arrival at the driver is the event."""
    import ray
    monkeypatch.setenv("PYTHONPATH", str(ROOT))     # as for the launcher's trials: workers import sweep

    @ray.remote
    def finalizers_raise():
        exec(FINALIZERS_RAISE, {})

    ray.init(address="local", include_dashboard=False, logging_level="warning", runtime_env=RUNTIME_ENV)
    try:
        ray.get(finalizers_raise.remote())
        seen = []

        def arrived() -> bool:
            seen.append(capfd.readouterr().err)
            return "ValueError: from a finalizer" in "".join(seen)
        assert wait_until(arrived)
        assert "SystemExit" not in "".join(seen), "".join(seen)
    finally:
        ray.shutdown()
