"""Helpers for the serving and page tests: small exported models, gray PNGs, and real server
processes on 127.0.0.1 that are waited on through their health endpoint and killed afterwards."""
from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.helpers import tiny_config, wait_until
from trainable.engine import Trainer
from trainable.export import export_generator

ROOT = Path(__file__).resolve().parents[1]
CONDITIONED = ("model.conditioning=film", "loss.saturation.range=[0.05,0.8]", "loss.saturation.weight=10")
FIXED = ("loss.saturation.weight=5", "loss.saturation.target=0.7")


def export_model(path: Path, *overrides: str) -> Path:
    """An untrained generator whose output depends on L and, when conditioned, on the targets
    (at initialization FiLM is the identity, which would make every target look the same)."""
    trainer = Trainer(tiny_config(*overrides))
    torch.manual_seed(1)
    with torch.no_grad():
        torch.nn.init.normal_(trainer.generator.head[0].weight, std=0.5)
        if trainer.generator.film is not None:
            torch.nn.init.normal_(trainer.generator.film.body[-1].weight, std=0.5)
    return export_generator(trainer.generator.state_dict(), trainer.cfg, 0, path)


def gray_png(path: Path, size: tuple[int, int] = (45, 30), seed: int = 0) -> Path:
    """A grayscale PNG (width, height) with smooth structure and noise."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 150, size[1]), np.linspace(0, 80, size[0]))
    Image.fromarray((ramp + rng.integers(0, 25, ramp.shape)).astype(np.uint8), "L").save(path)
    return path


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def from_b64(text: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(text))))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def start(command: list[str], log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """In its own session, so stop() can kill the server and the workers it forks."""
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll `url` (a health endpoint) until it answers 200; fail at once with the log when the
    process has died."""
    assert wait_until(lambda: answers(url), process, poll_s=0.2), log.read_text()[-3000:]


def stop(process: subprocess.Popen) -> None:
    """SIGKILL the whole session (uvicorn's worker outlives a dead parent)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
