"""A conditioned generator through every path: training moves the output the asked way, packed =
plain in float64, bf16, resume, export → colorize."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainable.colorizer import colorize_array, load_model
from tests.helpers import tiny_config
from trainable.color import image_statistics, lab_normalized_to_rgb, lab_normalized_to_uint8
from trainable.condition import condition_vector, fixed_targets
from trainable.data import ColorData, load_data
from trainable.engine import Trainer
from trainable.names import metric_names_of
from trainable.export import export_generator
from trainable.loop import run_training, train_epoch
from trainable.packed import PackedTrainer

FILM = ("model.conditioning=film", "loss.saturation.range=[0.05,0.8]", "loss.saturation.weight=30")


def _saturation_at(trainer: Trainer, images: torch.Tensor, sigma: float) -> torch.Tensor:
    condition = condition_vector(fixed_targets({"saturation": sigma}, len(images)))
    fake = trainer.colorize(images[:, :1], condition)
    return image_statistics(lab_normalized_to_rgb(fake), ("saturation",))["saturation"]


@pytest.mark.slow
def test_short_training_moves_saturation_with_the_asked_target():
    cfg = tiny_config(*FILM, "train.epochs=6", "train.batch_size=8", "data.synthetic_size=320",
                      "loss.condition.own_fraction=0.3", "model.d_conditioning=projection")
    trainer = Trainer(cfg)
    for _ in range(cfg.train.epochs):
        train_epoch(trainer)
    low, high = (_saturation_at(trainer, trainer.data.val, s) for s in (0.1, 0.9))
    assert float(high.mean() - low.mean()) > 0.1, (low.mean(), high.mean())    # 0.18 seen here
    assert float((high > low).float().mean()) > 0.9
    metrics = trainer.evaluate()
    assert set(metric_names_of(cfg)) <= set(metrics)
    assert metrics["val_control_monotonic_saturation"] > 0.5


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()])


@pytest.mark.slow
def test_packed_equals_plain_in_float64_with_conditioning(float64):
    """Trials that differ in ranges, λ, own share, drop and seed: one epoch packed = one epoch each."""
    trials = [("train.seed=1",),
              ("loss.saturation.range=[0.2,0.6]", "loss.saturation.weight=5", "loss.hue.weight=3",
               "loss.hue.range=[0.1,0.4]", "loss.condition.own_fraction=0.2", "loss.condition.drop=0.3",
               "train.seed=2")]
    common = ("model.conditioning=film", "loss.saturation.range=[0.05,0.8]", "loss.saturation.weight=30",
              "loss.hue.range=[0,1]", "loss.hue.weight=10", "model.d_conditioning=projection",
              "data.synthetic_size=96", "train.batch_size=8", "train.precision=fp32")
    configs = [tiny_config(*common, *trial) for trial in trials]
    loaded = load_data(configs[0].data, "cpu")
    data = ColorData(loaded.train.double(), loaded.val.double())
    plain = [Trainer(cfg, data) for cfg in configs]
    packed = [Trainer(cfg, data) for cfg in configs]
    plain_losses = [train_epoch(t)[0] for t in plain]
    packed_losses = train_epoch(PackedTrainer(packed))
    for a, b, la, lb in zip(plain, packed, plain_losses, packed_losses):
        assert la.keys() == lb.keys() and "control_error_hue" in la
        for key in la:
            assert la[key] == pytest.approx(lb[key], rel=1e-9, abs=1e-12), key
        for net in ("generator", "discriminator"):
            x, y = _flat(getattr(a, net)), _flat(getattr(b, net))
            assert float((x - y).norm() / x.norm()) < 1e-7
        assert a.generator.film.body[-1].weight.abs().max() > 0       # FiLM did learn


def test_packed_trials_must_condition_on_the_same_statistics():
    first = Trainer(tiny_config(*FILM))
    other = Trainer(tiny_config("model.conditioning=film", "loss.hue.range=[0,1]"), first.data)
    with pytest.raises(ValueError, match="range set for"):
        PackedTrainer([first, other])


@pytest.mark.parametrize("packed", [False, True])
def test_bf16_conditioned_step_is_finite(packed):
    cfg = tiny_config(*FILM, "train.precision=bf16", "model.d_conditioning=projection", "data.synthetic_size=48")
    trainers = [Trainer(cfg)] + ([Trainer(cfg)] if packed else [])
    group = PackedTrainer(trainers) if packed else trainers[0]
    losses = train_epoch(group)[0]
    assert all(np.isfinite(v) for v in losses.values()) and losses["control_error_saturation"] > 0


@pytest.mark.slow
def test_resume_draws_the_same_targets_and_gives_the_same_weights(tmp_path):
    overrides = (*FILM, "data.synthetic_size=96", "loss.condition.drop=0.3")
    straight = run_training(tiny_config(*overrides, "train.epochs=2"), tmp_path / "straight", progress=False)
    run_training(tiny_config(*overrides, "train.epochs=1"), tmp_path / "split", progress=False)
    resumed = run_training(tiny_config(*overrides, "train.epochs=2"), tmp_path / "split", progress=False)
    assert torch.equal(_flat(straight.generator), _flat(resumed.generator))
    assert torch.equal(_flat(straight.discriminator), _flat(resumed.discriminator))


def test_export_then_colorize_gives_what_the_trainer_gives(tmp_path):
    trainer = Trainer(tiny_config(*FILM))
    train_epoch(trainer)
    path = export_generator(trainer.generator.state_dict(), trainer.cfg, trainer.epoch, tmp_path / "g.pt")
    model = load_model(path)
    assert model.ranges == {"saturation": (0.05, 0.8)}
    assert torch.load(path, weights_only=True)["ranges"] == {"saturation": [0.05, 0.8]}
    real = trainer.data.val[:1]
    rgb = lab_normalized_to_uint8(real)[0]
    gray = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    from trainable.color import rgb_to_lab_normalized
    lightness = rgb_to_lab_normalized(gray)[:, :1]
    expected = lab_normalized_to_uint8(trainer.colorize(lightness, condition_vector(fixed_targets({"saturation": 0.6}, 1))))[0]
    got = colorize_array(model, rgb, {"saturation": 0.6})
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_conditioned_epoch_matches_the_eager_epoch():
    common = (*FILM, "train.device=cuda", "train.batch_size=32", "data.synthetic_size=1200", "model.width=0.25",
              "train.precision=fp32", "model.d_conditioning=projection")
    configs = [tiny_config(*common), tiny_config(*common, "train.cuda_graph=on")]
    data = load_data(configs[0].data, "cuda")
    eager, graphed = Trainer(configs[0], data), Trainer(configs[1], data)
    a, b = train_epoch(eager)[0], train_epoch(graphed)[0]
    assert a.keys() == b.keys() and a["control_error_saturation"] == pytest.approx(b["control_error_saturation"], rel=2e-2)
    x, y = _flat(eager.generator), _flat(graphed.generator)
    assert float((x - y).norm() / x.norm()) < 1e-2
