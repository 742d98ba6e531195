"""model.output=projected: the generator's ab lands on the asked targets, gradients flow through it,
and a projection with nothing to project onto is refused."""
from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import assert_packed_equals_plain, tiny_config
from tests.test_packed import _step_both, _trainers, float64  # noqa: F401 (float64: a fixture)
from trainable.color import image_statistics, lab_normalized_to_rgb
from trainable.condition import condition_vector, fixed_targets
from trainable.config import ConfigError
from trainable.engine import Trainer
from trainable.loop import train_epoch
from trainable.models import build_models
from trainable.packed import PackedTrainer
from trainable.projection import requested_targets, similarity_through
from trainable.train import main as train_main

PACKED_TRIALS = [("model.output=projected", "loss.saturation.weight=5", "loss.saturation.target=0.3",
                  "train.seed=1"),
                 ("model.output=projected", "loss.saturation.weight=20", "loss.saturation.target=0.7",
                  "train.seed=2")]


def colored_generator(*overrides: str):
    """A projected generator whose head is not the gray start, so its raw output has color."""
    generator, _ = build_models(tiny_config("model.output=projected", *overrides))
    torch.manual_seed(0)
    torch.nn.init.normal_(generator.head[0].weight, std=0.5)
    return generator


def saturation_of(lightness: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    rgb = lab_normalized_to_rgb(torch.cat([lightness, ab.detach()], 1))
    return image_statistics(rgb, ("saturation",))["saturation"]


def test_projected_without_a_target_is_refused_in_one_line(capsys):
    with pytest.raises(ConfigError, match=r"^model.output: projected needs a target"):
        tiny_config("model.output=projected")
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--set", "model.output=projected", "--checkpoints-path", "unused"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "model.output" in err


def test_fixed_target_is_met_and_gradients_reach_every_layer():
    generator = colored_generator("loss.saturation.weight=5", "loss.saturation.target=0.3")
    lightness = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ab = generator(lightness)
    assert saturation_of(lightness, ab).tolist() == pytest.approx([0.3] * 6, abs=2e-3)
    ab.square().sum().backward()
    convs = [m for m in generator.encoder[0] if isinstance(m, torch.nn.Conv2d)]
    first, head = convs[0].weight.grad, generator.head[0].weight.grad
    assert torch.isfinite(first).all() and first.abs().sum() > 0 and head.abs().sum() > 0


def test_similarity_through_is_exact_forward_and_scales_or_rotates_the_gradient():
    ab = torch.randn(2, 2, 4, 4, requires_grad=True)
    doubled = similarity_through(ab, (2 * ab).detach())
    assert torch.allclose(doubled, 2 * ab)
    doubled.sum().backward()
    assert torch.allclose(ab.grad, torch.full_like(ab, 2.0))
    ab.grad = None
    quarter_turn = torch.cat([-ab[:, 1:], ab[:, :1]], 1).detach()               # (a, b) → (−b, a)
    rotated = similarity_through(ab, quarter_turn)
    assert torch.allclose(rotated, quarter_turn, atol=1e-6)
    rotated[:, 0].sum().backward()                    # d(−b)/da = 0, d(−b)/db = −1
    assert torch.allclose(ab.grad[:, 0], torch.zeros(2, 4, 4), atol=1e-6)
    assert torch.allclose(ab.grad[:, 1], -torch.ones(2, 4, 4), atol=1e-6)


def test_requested_targets_read_back_what_the_condition_vector_wrote():
    condition = condition_vector(fixed_targets({"saturation": 0.4, "hue": 0.7}, 3))
    values, present = requested_targets(condition, ("hue", "saturation"))
    assert values[0].tolist() == pytest.approx([0.7, 0.4], abs=1e-6) and present.eq(1).all()


def test_conditioned_projection_moves_present_images_and_leaves_free_ones():
    generator = colored_generator("model.conditioning=film", "loss.saturation.weight=5",
                                  "loss.saturation.range=[0.1,0.6]")
    generator.eval()
    lightness = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    asked = condition_vector(fixed_targets({"saturation": 0.2}, 4))
    asked[2:] = 0                                          # images 2 and 3: saturation free
    with torch.no_grad():
        projected = generator(lightness, asked)
        projection, generator.output = generator.output, None
        learned = generator(lightness, asked)
        generator.output = projection
    assert saturation_of(lightness[:2], projected[:2]).tolist() == pytest.approx([0.2, 0.2], abs=2e-3)
    assert torch.allclose(projected[2:], learned[2:], atol=1e-4)
    assert not math.isclose(float(saturation_of(lightness[:1], learned[:1])), 0.2, abs_tol=0.02)


@pytest.mark.slow
def test_a_projected_trainer_trains_and_meets_its_target_sooner_than_a_learned_one():
    errors = {}
    for output in ("learned", "projected"):
        trainer = Trainer(tiny_config(f"model.output={output}", "loss.saturation.weight=5",
                                      "loss.saturation.target=0.3"))
        for _ in range(2):      # the zero-initialized head starts gray: scaling chroma needs some first
            losses = train_epoch(trainer)[0]
        assert all(math.isfinite(v) for v in losses.values())
        errors[output] = trainer.evaluate()["val_control_error_saturation"]
    assert errors["projected"] < errors["learned"] / 4, errors


@pytest.mark.slow
def test_packed_projected_trials_each_project_onto_their_own_targets(float64):
    """Packed steps equal plain ones in float64: each trial's fixed targets travel in its buffers."""
    plain, data = _trainers(trials=PACKED_TRIALS)
    packed, _ = _trainers(data, trials=PACKED_TRIALS)
    history = _step_both(plain, PackedTrainer(packed), 3)
    assert_packed_equals_plain(history)
    targets = [float(t.generator.output.fixed_targets[0]) for t in packed]
    assert targets == pytest.approx([0.3, 0.7])


def test_an_exported_projected_generator_projects_when_loaded(tmp_path):
    from trainable.export import export_generator, load_generator
    generator = colored_generator("loss.saturation.weight=5", "loss.saturation.target=0.45")
    cfg = tiny_config("model.output=projected", "loss.saturation.weight=5", "loss.saturation.target=0.45")
    loaded, _, _ = load_generator(export_generator(generator.state_dict(), cfg, 1, tmp_path / "g.pt"))
    lightness = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        ab = loaded(lightness)
    assert saturation_of(lightness, ab).tolist() == pytest.approx([0.45] * 3, abs=2e-3)
