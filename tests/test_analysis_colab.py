"""Every `!python -m` line of the "On Colab" section of docs/sweeps.md, run on the shared smoke sweep:
`saturation` read as `smoke`, `$S` the folder that holds it. Only the install and the Drive mount are
not run."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import ROOT, launch_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def colab_commands() -> list[str]:
    guide = (ROOT / "docs" / "sweeps.md").read_text()
    text = guide.split("\n## On Colab\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", text, flags=re.S)
    return [line[1:] for block in blocks for line in block.splitlines() if line.startswith("!python -m ")]


def test_colab_commands_run_on_the_smoke_sweep(smoke_sweep_dir):
    commands = colab_commands()
    assert [c.split()[2] for c in commands] == ["sweep.launch", "analysis.rank", "analysis.report",
                                                "sweep.final", "sweep.colorize"]
    folder = smoke_sweep_dir.parents[1]  # $S holds sweeps/ and mlflow.db
    for command in commands:
        line = command.replace("$S", str(folder)).replace("saturation", "smoke")
        done = subprocess.run([sys.executable, *shlex.split(line)[1:]], cwd=ROOT, env=launch_env(),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    assert (folder / "report.html").exists() and (folder / "ranking.csv").exists()
    assert (folder / "colorized.png").exists()
    assert (folder / "sweeps" / "smoke" / "final" / "generator.pt").exists()
