"""Colorize end to end: exports, checkpoints, any image size, clear refusals, unsafe files."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweep.colorize import main
from tests.helpers import tiny_config
from trainable.color import rgb_to_lab_normalized
from trainable.checkpoint import atomic_torch_save
from trainable.engine import Trainer
from trainable.export import ModelError, export_generator, load_generator
from trainable.loop import run_training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    cfg = tiny_config("train.epochs=1", "loss.saturation.weight=5", "loss.saturation.target=0.7")
    trainer = run_training(cfg, folder / "run", progress=False)
    export_generator(trainer.generator.state_dict(), trainer.cfg, trainer.epoch, folder / "generator.pt")
    return folder


def _image(path, size=(45, 70), mode="RGB"):
    array = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(array).convert(mode).save(path)
    return path


@pytest.mark.parametrize("model", ["generator.pt", "run"])
def test_colorizes_any_size_from_export_or_checkpoint(trained, tmp_path, model, capsys):
    source = _image(tmp_path / "photo.jpg")
    assert main([str(trained / model), str(source), "-o", str(tmp_path / "out.png")]) == 0
    out = Image.open(tmp_path / "out.png")
    assert out.size == (45, 70) and out.mode == "RGB"
    assert "saturation 0.7" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*tmp*"))


def test_grayscale_inputs_and_folders(trained, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    _image(images / "a.png", (33, 17), "L")
    _image(images / "b.jpg", (64, 64))
    assert main([str(trained / "generator.pt"), str(images), "-o", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "a.png").size == (33, 17)
    assert Image.open(tmp_path / "out" / "b.png").size == (64, 64)


def test_keeps_the_input_lightness(trained, tmp_path):
    source = _image(tmp_path / "gray.png", (32, 32), "L")
    main([str(trained / "generator.pt"), str(source), "-o", str(tmp_path / "out.png")])

    def lightness(path):
        rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None] / 255
        return rgb_to_lab_normalized(rgb)[0, 0] * 50 + 50

    difference = (lightness(source) - lightness(tmp_path / "out.png")).abs().mean()
    assert difference < 8, difference           # L kept up to gamut clipping of an untrained net's ab


@pytest.mark.parametrize("case", ["missing", "not_image", "not_model", "other_layout", "no_such_device"])
def test_bad_inputs_fail_with_one_line_and_write_nothing(trained, tmp_path, case, capsys):
    model, source, flags = trained / "generator.pt", _image(tmp_path / "ok.png"), []
    if case == "no_such_device":
        flags = ["--device", "cuda:99" if torch.cuda.is_available() else "cuda"]
    if case == "missing":
        source = tmp_path / "nothere.jpg"
    elif case == "not_image":
        source = tmp_path / "text.png"
        source.write_text("hello")
    elif case == "not_model":
        model = source
    else:
        payload = torch.load(trained / "generator.pt", weights_only=True)
        payload["config"]["model"]["width"] = 0.25
        model = tmp_path / "other.pt"
        atomic_torch_save(payload, model)
    assert main([str(model), str(source), "-o", str(tmp_path / "out.png"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "out.png").exists()


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch EXPLOITED",))


def test_a_file_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "colorsweep-generator", "x": _Exploit()}, evil, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(ModelError, match="safe loading refused"):
        load_generator(evil)
    assert not (tmp_path / "EXPLOITED").exists()


def test_export_round_trip_matches_the_trainer(trained):
    generator, cfg, targets = load_generator(trained / "generator.pt")
    trainer = Trainer(cfg)
    trainer.generator.load_state_dict(generator.state_dict())
    gray = trainer.data.val[:4, :1]
    assert torch.allclose(trainer.colorize(gray)[:, 1:], generator(gray), atol=1e-6)
    assert targets == {"saturation": {"target": 0.7, "weight": 5.0}}


@pytest.mark.parametrize("output, words", [
    ("/proc/o.png", ["-o /proc/o.png: cannot write in /proc"]),
    ("{tmp}/a_file/o.png", ["a_file is a file, not a folder"]),
    ("{tmp}/a_file/out", ["a_file is a file, not a folder"]),
    ("{tmp}/out.txt", ["out.txt: the output is a PNG image", ".png"]),
])
def test_unusable_output_is_one_line_exit_2_and_writes_nothing(trained, tmp_path, output, words, capsys):
    source = _image(tmp_path / "one.png")
    (tmp_path / "a_file").write_text("not a folder")
    before = sorted(tmp_path.rglob("*"))
    assert main([str(trained / "generator.pt"), str(source), "-o", output.format(tmp=tmp_path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and all(w in err[0] for w in words), captured
    assert "several inputs" not in err[0] and "Traceback" not in captured.out
    assert sorted(tmp_path.rglob("*")) == before and not Path("/proc/o.png").exists()
