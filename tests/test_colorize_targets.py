"""Colorize with targets and at the training scale: flags, refusals, strips, scale, batches, subfolders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainable.colorizer import colorize_array, colorize_many, load_model, predict_ab, working_size
from sweep.colorize import main
from tests.helpers import tiny_config
from trainable.checkpoint import save_checkpoint
from trainable.engine import Trainer

CONDITIONED = ("model.conditioning=film", "loss.saturation.range=[0.05,0.8]", "loss.saturation.weight=10")


def _model_folder(folder, *overrides):
    trainer = Trainer(tiny_config(*overrides))
    torch.manual_seed(1)
    with torch.no_grad():       # weights that make the output depend on L and, if conditioned, on c
        torch.nn.init.normal_(trainer.generator.head[0].weight, std=0.5)
        if trainer.generator.film is not None:
            torch.nn.init.normal_(trainer.generator.film.body[-1].weight, std=0.5)
    save_checkpoint(folder / "checkpoint", trainer.state_dict())
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"plain": _model_folder(root / "plain", "loss.saturation.weight=5", "loss.saturation.target=0.7"),
            "film": _model_folder(root / "film", *CONDITIONED)}


def _image(path, size=(45, 70)):
    array = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("model, flags, names", [
    ("plain", ["--saturation", "0.3"], ["--saturation", "unconditioned"]),
    ("film", ["--hue", "0.3"], ["--hue", "saturation in [0.05, 0.8]"]),
    ("film", ["--strip", "value=0.1:0.9:3"], ["--value", "saturation in [0.05, 0.8]"]),
])
def test_targets_the_model_does_not_take_fail_with_one_line(models, tmp_path, capsys, model, flags, names):
    source = _image(tmp_path / "photo.png")
    assert main([str(models[model]), str(source), "-o", str(tmp_path / "out.png"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and all(n in err[0] for n in names), err
    assert not (tmp_path / "out.png").exists()


def test_out_of_range_warns_and_runs_and_the_ranges_are_printed(models, tmp_path, capsys):
    source = _image(tmp_path / "photo.png")
    assert main([str(models["film"]), str(source), "-o", str(tmp_path / "out.png"), "--saturation", "0.95"]) == 0
    out = capsys.readouterr()
    assert "saturation in [0.05, 0.8]" in out.out
    assert "warning: --saturation 0.95 is outside the training range [0.05, 0.8]" in out.err
    assert (tmp_path / "out.png").exists()


def test_targets_change_the_output_and_free_is_allowed(models):
    model = load_model(models["film"])
    rgb = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    low, high, free = (colorize_array(model, rgb, t) for t in ({"saturation": 0.1}, {"saturation": 0.8}, None))
    assert np.abs(low.astype(int) - high.astype(int)).max() > 5
    assert not np.array_equal(free, low)


def test_strip_has_a_column_per_value_for_each_input(models, tmp_path):
    _image(tmp_path / "a.png", (40, 30))
    _image(tmp_path / "b.png", (40, 30))
    out = tmp_path / "strip.png"
    assert main([str(models["film"]), str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out),
                 "--strip", "saturation=0.1:0.7:4"]) == 0
    strip = np.array(Image.open(out))
    assert strip.shape == (60, 160, 3)
    columns = [strip[:30, i * 40:(i + 1) * 40].astype(int) for i in range(4)]
    assert all(np.abs(a - b).max() > 0 for a, b in zip(columns, columns[1:]))


def test_train_scale_predicts_at_the_training_size_and_keeps_full_resolution_lightness(models):
    model = load_model(models["plain"])
    seen = []
    hook = model.generator.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    gray = torch.rand(1, 1, 64, 96) * 2 - 1
    try:
        ab_train = predict_ab(model, gray, None, "train")
        ab_native = predict_ab(model, gray, None, "native")
    finally:
        hook.remove()
    assert working_size(64, 96, 32) == (32, 48)
    assert seen == [(1, 1, 32, 48), (1, 1, 64, 96)]
    assert ab_train.shape == ab_native.shape == (1, 2, 64, 96)
    assert not torch.allclose(ab_train, ab_native, atol=1e-3)
    small = torch.rand(1, 1, 32, 32) * 2 - 1          # at the training size both are the same
    assert torch.allclose(predict_ab(model, small, None, "train"), predict_ab(model, small, None, "native"))


def test_batched_equals_one_by_one_and_folders_are_searched_with_subfolders(models, tmp_path):
    model = load_model(models["plain"])
    rng = np.random.default_rng(2)
    images = [(rng.random(shape) * 255).astype(np.uint8) for shape in ((30, 40, 3), (30, 40, 3), (50, 20, 3))]
    batched = colorize_many(model, images, None)
    for image, colored in zip(images, batched):
        assert np.abs(colorize_array(model, image).astype(int) - colored.astype(int)).max() <= 1
    (tmp_path / "in" / "sub").mkdir(parents=True)
    _image(tmp_path / "in" / "top.png")
    _image(tmp_path / "in" / "sub" / "deep.jpg")
    assert main([str(models["plain"]), str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--scale", "native"]) == 0
    assert (tmp_path / "out" / "top.png").exists() and (tmp_path / "out" / "sub" / "deep.png").exists()
