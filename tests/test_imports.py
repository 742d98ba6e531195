"""No import cycle: every module of trainable/, sweep/ and analysis/ can be the first one imported.

One fresh interpreter imports each module in turn after dropping every project module it holds, so
each import starts alone (as `python -m <module>` would) while torch, Ray and MLflow load only once.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

PACKAGES = ("trainable", "sweep", "analysis")
IMPORT_EACH_ALONE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in {packages!r}]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=-3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
""".format(packages=PACKAGES)


def project_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            names.append(package if path.stem == "__init__" else f"{package}.{path.stem}")
    return names


@pytest.mark.integration
@pytest.mark.slow
def test_each_module_imports_first_without_a_cycle():
    modules = project_modules()
    assert len(modules) > 30 and "trainable.loop" in modules and "sweep.launch" in modules
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *modules], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
