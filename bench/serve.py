"""`python -m bench.serve`: what serving a colorizer costs on this machine, per 512×512 image.

For each width: a conditioned generator (random weights: the cost does not depend on them) is
exported, then timed three ways on one 512×512 grayscale image with a saturation target:
`colorize_array` (the CLI's and the page's path) at both scales; the pyfunc's `predict` on a base64
PNG (what the server runs, PNG decode and encode included); and, with `--http`, a real
`mlflow models serve` process answering POST /invocations. Prints the median of `--repeats` runs
after one warm-up, the size of the served answer, and the load average (other processes slow it).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from PIL import Image

from sweep import register
from trainable.colorizer import colorize_array, load_model
from trainable.config import load_config
from trainable.export import export_generator
from trainable.models import build_models

TARGETS = {"saturation": 0.5}


def median_seconds(action, repeats: int) -> float:
    action()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def export(width: float, folder: Path) -> Path:
    cfg = load_config(None, [f"model.width={width}", "model.conditioning=film", "loss.saturation.range=[0.05,0.8]"])
    generator, _ = build_models(cfg)
    with torch.no_grad():   # a colored answer (a new generator outputs gray), so its PNG size is typical
        torch.nn.init.normal_(generator.head[0].weight, std=0.5)
        torch.nn.init.normal_(generator.film.body[-1].weight, std=0.5)
    return export_generator(generator.state_dict(), cfg, 0, folder / f"generator-{width}.pt")


def gray_image(size: int) -> np.ndarray:
    ramp = np.add.outer(np.linspace(0, 200, size), np.linspace(0, 55, size))
    return (ramp + np.random.default_rng(0).integers(0, 30, ramp.shape)).astype(np.uint8)


def png_base64(gray: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(gray, "L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def served(generator: Path, folder: Path, body: bytes, repeats: int, port: int) -> tuple[float, int]:
    """(median seconds per request, bytes of the answer) from a real `mlflow models serve`."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    _, model_uri = register.register(generator, "bench", uri)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    log = open(folder / "serve.log", "w")
    server = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        while True:            # its health endpoint answers once the model is loaded
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"mlflow models serve exited with {server.returncode}:\n"
                                     + (folder / "serve.log").read_text()[-3000:])
                time.sleep(0.2)
        request = lambda: urllib.request.urlopen(urllib.request.Request(   # noqa: E731
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}), timeout=600).read()
        return median_seconds(request, repeats), len(request())
    finally:
        try:
            os.killpg(server.pid, 9)
        except ProcessLookupError:
            pass
        server.wait()
        log.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--http", action="store_true", help="also time a real mlflow models serve process")
    parser.add_argument("--port", type=int, default=5077)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads here and in the server (OMP_NUM_THREADS); on a busy machine more are slower")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)      # inherited by the server process
    gray = gray_image(args.size)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    body = json.dumps({"dataframe_records": [{"image": png_base64(gray)}], "params": TARGETS}).encode()
    print(f"{args.size}×{args.size} gray image, request body {len(body):,} bytes; torch threads {torch.get_num_threads()}")
    print("| width | colorize, scale train | colorize, scale native | pyfunc predict (PNG in/out) | served request | answer |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        os.chdir(folder)            # MLflow's default artifact root is ./mlruns
        for width in args.widths:
            generator = export(width, folder)
            model = load_model(generator)
            train = median_seconds(lambda: colorize_array(model, rgb, TARGETS, "train"), args.repeats)
            native = median_seconds(lambda: colorize_array(model, rgb, TARGETS, "native"), args.repeats)
            register.save_pyfunc(generator, folder / f"pyfunc-{width}")
            pyfunc = mlflow.pyfunc.load_model(str(folder / f"pyfunc-{width}"))
            frame = pd.DataFrame({"image": [png_base64(gray)]})
            predict = median_seconds(lambda: pyfunc.predict(frame, params=TARGETS), args.repeats)
            http, size = served(generator, folder, body, args.repeats, args.port) if args.http else (float("nan"), 0)
            print(f"| {width:g} (load {os.getloadavg()[0]:.0f}) | {train * 1000:.0f} ms | {native * 1000:.0f} ms | {predict * 1000:.0f} ms "
                  f"| {http * 1000:.0f} ms | {size:,} bytes |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
