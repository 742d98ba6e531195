"""GPU-only checks of the fast paths (run on a GPU machine: `pytest -m gpu tests/test_gpu.py`)."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_config
from trainable.data import load_data
from trainable.engine import Trainer
from trainable.loop import train_epoch
from trainable.packed import PackedTrainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = ("train.device=cuda", "train.batch_size=32", "data.synthetic_size=1200", "model.width=0.25",
        "loss.saturation.weight=20", "loss.saturation.target=0.7")


def _pair(*extra: str):
    configs = [tiny_config(*CUDA, *extra), tiny_config(*CUDA, "train.cuda_graph=on", *extra)]
    data = load_data(configs[0].data, "cuda")
    return Trainer(configs[0], data), Trainer(configs[1], data)


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_graphed_epoch_matches_the_eager_epoch_fp32():
    eager, graphed = _pair("train.precision=fp32")
    a, b = train_epoch(eager)[0], train_epoch(graphed)[0]
    assert a.keys() == b.keys() and eager.step == graphed.step
    assert a["loss_g"] == pytest.approx(b["loss_g"], rel=1e-2)
    first_diff = (_flat(eager.generator) - _flat(graphed.generator)).norm() / _flat(eager.generator).norm()
    assert first_diff < 1e-2


def _adam_steps(trainer: Trainer) -> list[float]:
    return [float(state["step"]) for state in trainer.opt_g.state_dict()["state"].values()]


def test_graph_capture_does_not_advance_training():
    """Capture runs warm-up steps on the live state and must restore it: after one epoch the graphed
    trainer is where the eager one is, far closer than one more step would have moved it."""
    eager, graphed = _pair("train.precision=fp32", "data.synthetic_size=80")
    before = _flat(graphed.generator).clone()
    train_epoch(eager)
    train_epoch(graphed)
    assert graphed.step == eager.step == len(graphed.data.train) // 32
    assert _adam_steps(graphed) == _adam_steps(eager)
    assert not torch.equal(before, _flat(graphed.generator))
    after_epoch = _flat(eager.generator).clone()
    eager.scheduled_step(eager.data.train[:32])
    one_step = (_flat(eager.generator) - after_epoch).norm()
    assert (_flat(graphed.generator) - after_epoch).norm() < one_step / 10


def test_bf16_loss_curve_follows_fp32_over_100_steps():
    fp32 = Trainer(tiny_config(*CUDA, "train.precision=fp32", "data.synthetic_size=4000"))
    bf16 = Trainer(tiny_config(*CUDA, "train.precision=bf16", "train.cuda_graph=on",
                               "data.synthetic_size=4000"), fp32.data)
    a, b = train_epoch(fp32)[0], train_epoch(bf16)[0]          # about 110 steps each
    assert fp32.step >= 100
    assert abs(a["loss_g"] - b["loss_g"]) / a["loss_g"] < 1e-2
    assert abs(a["loss_l1"] - b["loss_l1"]) / a["loss_l1"] < 1e-2


def test_packed_trials_on_cuda_resume_on_the_plain_path():
    cfgs = [tiny_config(*CUDA, f"train.seed={seed}") for seed in (1, 2, 3)]
    data = load_data(cfgs[0].data, "cuda")
    trainers = [Trainer(cfg, data) for cfg in cfgs]
    pack = PackedTrainer(trainers)
    train_epoch(pack)
    states = [t.state_dict() for t in pack.sync()]
    plain = Trainer(cfgs[1], data)
    plain.load_state_dict(states[1])
    train_epoch(plain)                                   # fused Adam takes the packed state
    assert plain.epoch == 2 and torch.isfinite(_flat(plain.generator)).all()
