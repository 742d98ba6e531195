"""`python -m sweep.dashboard`: optuna-dashboard started for real on a free port of 127.0.0.1 for
the session's smoke sweep, asked over its HTTP API (the routes of optuna_dashboard/_app.py)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from sweep.dashboard import main
from tests.helpers import ROOT, launch_env, wait_until


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def test_a_folder_without_a_study_is_one_line_exit_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no sweep study here" in err and len(err.splitlines()) == 1


@pytest.mark.integration
@pytest.mark.slow
def test_dashboard_answers_for_the_sweeps_study(smoke_sweep_dir, tmp_path):
    """Started with the command the launcher's summary printed, on a free port."""
    printed = re.search(r"see it with: python -m sweep\.dashboard (\S+)$",
                        (smoke_sweep_dir.parents[1] / "launch.stdout").read_text(), re.MULTILINE)
    assert printed and printed.group(1) == str(smoke_sweep_dir)
    port = _free_port()
    log = open(tmp_path / "dashboard.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "sweep.dashboard", printed.group(1), "--port", str(port)],
                              cwd=ROOT, env=launch_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            _get(f"{base}/api/meta")
            return True
        except OSError:
            return False
    try:
        assert wait_until(answers, server), (tmp_path / "dashboard.log").read_text()[-2000:]
        studies = _get(f"{base}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["smoke"]
        study = _get(f"{base}/api/studies/{studies[0]['study_id']}")
        assert study["objective_names"] == ["val_control_error", "val_realism_abhist"]
        assert sorted(t["state"] for t in study["trials"]) == ["Complete"] * 4
        assert {t["intermediate_values"][-1]["step"] for t in study["trials"]} == {2}
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
