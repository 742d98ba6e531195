"""The Gradio page (sweep.app) through gradio_client against real servers on 127.0.0.1: the same
pixels as sweep.colorize, fixed-target models without sliders, the saturation slider of a trained
conditioned model, and a headless-Chromium screenshot."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from sweep.app import STRIP_POINTS, build_app
from trainable.colorizer import colorize_array, colorize_variants, load_model
from tests.helpers import tiny_config, wait_until
from tests.serving_fixtures import (CONDITIONED, FIXED, export_model, free_port, gray_png, server_env, start, stop,
                                    wait_until_up)
from trainable.color import image_statistics
from trainable.datasets import make_synthetic
from trainable.export import export_generator
from trainable.loop import run_training

gradio_client = pytest.importorskip("gradio_client")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """`python -m sweep.app MODEL --port P` as a user starts it."""
    root = tmp_path_factory.mktemp("app")
    model = export_model(root / "film.pt", *CONDITIONED)
    port, log = free_port(), root / "app.log"
    process = start([sys.executable, "-m", "sweep.app", str(model), "--port", str(port)], log, root, server_env())
    try:
        wait_until_up(f"http://127.0.0.1:{port}/", process, log)
        yield model, f"http://127.0.0.1:{port}/", process, log
    finally:
        stop(process)


def test_the_page_names_the_cli_flag_for_a_public_link(page):
    """Gradio's own hint names its Python argument (share=True), which a user of the CLI cannot set."""
    _, url, process, log = page
    assert wait_until(lambda: "--share" in log.read_text(), process), log.read_text()
    printed = log.read_text()
    assert f"page: {url}" in printed and "share=True" not in printed, printed


def in_process(model):
    port = free_port()
    app = build_app(model)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return app, f"http://127.0.0.1:{port}/"


def colorize_on_page(url, image, scale, strip_name, *values):
    client = gradio_client.Client(url, verbose=False)
    return client.predict(gradio_client.handle_file(str(image)), scale, strip_name, *values, api_name="/colorize")


def pixels(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def test_page_gives_sweep_colorize_pixels_strip_and_download(page, tmp_path):
    model_path, url, _, _ = page
    model, image = load_model(model_path), gray_png(tmp_path / "gray.png", (40, 30))
    rgb = pixels(image)
    result, strip, download = colorize_on_page(url, image, "native", "saturation", 0.7, False)
    expected = colorize_array(model, rgb, {"saturation": 0.7}, "native")
    assert np.array_equal(pixels(result), expected) and np.array_equal(pixels(download), expected)
    values = np.linspace(0.05, 0.8, STRIP_POINTS)
    columns = colorize_variants(model, rgb, [{"saturation": float(v)} for v in values], "native")
    assert np.array_equal(pixels(strip), np.concatenate(columns, axis=1))
    free, _, _ = colorize_on_page(url, image, "train", "saturation", 0.7, True)
    assert np.array_equal(pixels(free), colorize_array(model, rgb, None, "train"))
    assert listening_addresses(int(url.rsplit(":", 1)[1].strip("/"))) == {"0100007F"}   # 127.0.0.1 only


def listening_addresses(port: int) -> set[str]:
    """Local addresses (kernel hex) of the sockets listening on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_fixed_target_model_shows_its_targets_and_has_no_sliders(tmp_path):
    model = load_model(export_model(tmp_path / "fixed.pt", *FIXED))
    app, url = in_process(model)
    try:
        with urllib.request.urlopen(url + "config") as answer:
            components = json.loads(answer.read())["components"]
        kinds = [c["type"] for c in components]
        shown = [c["props"].get("value") for c in components if c["type"] == "json"]
        assert "slider" not in kinds and shown == [{"saturation": 0.7}]
        image = gray_png(tmp_path / "gray.png")
        result, strip, _ = colorize_on_page(url, image, "train", None)
        assert np.array_equal(pixels(result), colorize_array(model, pixels(image), None, "train")) and strip is None
    finally:
        app.close()


def saturation_of(path) -> float:
    rgb = torch.from_numpy(pixels(path)).permute(2, 0, 1)[None].float() / 255
    return image_statistics(rgb, ["saturation"])["saturation"].item()


def test_moving_the_saturation_slider_up_raises_the_saturation(tmp_path):
    # a strong control term and a weak L1 so that 6 tiny epochs learn the condition
    cfg = tiny_config(*CONDITIONED[:2], "loss.saturation.weight=100", "loss.l1_weight=10",
                      "loss.condition.own_fraction=0.2", "optim.lr_generator=1e-3", "train.epochs=6")
    trainer = run_training(cfg, tmp_path / "run", progress=False)
    model = load_model(export_generator(trainer.generator.state_dict(), cfg, trainer.epoch, tmp_path / "g.pt"))
    image = tmp_path / "synthetic.png"
    Image.fromarray(make_synthetic(2, 32, 123)[1]).convert("L").save(image)
    app, url = in_process(model)
    try:
        low, high = (colorize_on_page(url, image, "train", "saturation", v, False)[0] for v in (0.2, 0.7))
        assert saturation_of(high) > saturation_of(low) + 0.05, (saturation_of(low), saturation_of(high))
    finally:
        app.close()


def test_screenshot_of_the_page(page, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: the page is tested through gradio_client only")
    shot = tmp_path / "page.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1100",
                    "--virtual-time-budget=900000", page[1]], check=True, capture_output=True, timeout=180)
    image = pixels(shot).astype(float)
    assert image.shape[:2] == (1100, 1200) and image.std() > 10
