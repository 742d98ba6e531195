"""bf16, channels_last and capturability of the step, on the CPU (bf16 autocast runs on any CPU)."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from tests.helpers import tiny_config
from trainable.data import apply_flip, epoch_plan, load_data
from trainable.engine import Trainer, native_bf16_cpu, resolve_memory_format, resolve_precision
from trainable.packed import PackedTrainer

CURVE = ("data.synthetic_size=2400", "train.batch_size=16", "loss.saturation.weight=20",
         "loss.saturation.target=0.7")
ALL_CONTROLS = ("loss.saturation.weight=20", "loss.hue.weight=5", "loss.hue.target=0.3", "loss.value.weight=1",
                "loss.red.weight=3", "loss.green.weight=2", "loss.blue.weight=2", "loss.colorfulness.weight=1")


def _plain_curve(trainer: Trainer, steps: int) -> torch.Tensor:
    order, flips = epoch_plan(len(trainer.data.train), trainer.cfg.train.batch_size, trainer.rng, True)
    losses = []
    for i in range(steps):
        out = trainer.scheduled_step(apply_flip(trainer.data.train[order[i]], flips[i]))
        losses.append(torch.stack([out["loss_g"], out["loss_l1"]]))
    return torch.stack(losses)


def _packed_curve(trainer: Trainer, steps: int) -> torch.Tensor:
    pack = PackedTrainer([trainer])
    plan = pack.plan_epoch()
    lr = pack.lr_factors(steps)
    losses = []
    for i in range(steps):
        out = pack.step(pack.next_batch(plan, i), lr[i])
        losses.append(torch.stack([out["loss_g"][0], out["loss_l1"][0]]))
    return torch.stack(losses)


@pytest.mark.slow
def test_bf16_loss_curves_follow_fp32_over_100_steps():
    """The issue's bf16 criterion, plain (autocast) and packed (explicit casts): every step's
    generator and L1 loss within 1e-2 of the fp32 run's on the same batches."""
    data = load_data(tiny_config(*CURVE).data, "cpu")
    fp32 = _plain_curve(Trainer(tiny_config(*CURVE, "train.precision=fp32"), data), 100)
    plain = _plain_curve(Trainer(tiny_config(*CURVE, "train.precision=bf16"), data), 100)
    packed = _packed_curve(Trainer(tiny_config(*CURVE, "train.precision=bf16"), data), 100)
    packed_fp32 = _packed_curve(Trainer(tiny_config(*CURVE, "train.precision=fp32"), data), 3)
    for bf16 in (plain, packed):
        assert ((bf16 - fp32).abs() / fp32).max() < 1e-2
    # ...and they did compute in bf16: autocast under vmap would silently have stayed in fp32
    assert not torch.equal(packed[:3], packed_fp32)
    assert not torch.equal(plain, fp32)


def test_packed_bf16_convolutions_run_in_bf16():
    trainer = Trainer(tiny_config("train.precision=bf16"))
    pack = PackedTrainer([trainer])
    gray = trainer.data.train[:4, :1].unsqueeze(0)
    assert pack.generate(gray).dtype == torch.bfloat16
    assert pack.g_params[next(iter(pack.g_params))].dtype == torch.float32      # fp32 master weights


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_packed_step_never_reads_device_values_on_the_host(precision):
    """What a CUDA graph needs: no .item(), no data-dependent shape anywhere in the D+G step, with
    every control term on. Fake tensors carry no values, so any such read raises."""
    trainers = [Trainer(tiny_config(*ALL_CONTROLS, f"train.precision={precision}")),
                Trainer(tiny_config("optim.schedule=exponential", f"train.precision={precision}"))]
    pack = PackedTrainer(trainers)
    plan = pack.plan_epoch()
    batch, lr = pack.next_batch(plan, 0), pack.lr_factors()[0]
    before = [p.clone() for p in pack.g_params.values()]
    with FakeTensorMode(allow_non_fake_inputs=True):
        losses = pack.step(batch, lr)
    assert losses["loss_g"].shape == (2,) and "control_hue" in losses
    assert all(torch.equal(a, b) for a, b in zip(before, pack.g_params.values()))   # fakes only


def test_fake_tensors_do_refuse_host_reads():
    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(Exception, match="local_scalar_dense"):
        torch.ones(3).sum().item()


def test_precision_choices_on_the_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision(tiny_config("train.precision=fp32"), cpu) is None
    assert resolve_precision(tiny_config("train.precision=bf16"), cpu) == torch.bfloat16
    auto = resolve_precision(tiny_config("train.precision=auto"), cpu)
    assert auto == (torch.bfloat16 if native_bf16_cpu() else None)
    with pytest.raises(ValueError, match="train.precision: fp16 needs a CUDA device"):
        Trainer(tiny_config("train.precision=fp16"))


def test_packed_steps_refuse_fp16():
    trainer = Trainer(tiny_config())
    trainer.autocast_dtype = torch.float16           # what train.precision=fp16 gives on CUDA
    with pytest.raises(ValueError, match="fp16 needs a loss scaler"):
        PackedTrainer([trainer])


def test_channels_last_changes_the_layout_not_the_training():
    cpu = torch.device("cpu")
    assert resolve_memory_format(tiny_config("train.channels_last=auto"), cpu) == torch.channels_last
    assert resolve_memory_format(tiny_config("train.channels_last=off"), cpu) == torch.contiguous_format
    data = load_data(tiny_config().data, "cpu")
    nhwc = Trainer(tiny_config("train.precision=fp32", "train.channels_last=on"), data)
    nchw = Trainer(tiny_config("train.precision=fp32", "train.channels_last=off"), data)
    assert nhwc.generator.encoder[1][0].weight.is_contiguous(memory_format=torch.channels_last)
    own = Trainer(tiny_config("train.channels_last=on")).data.train     # loaded in the layout once,
    assert own.is_contiguous(memory_format=torch.channels_last)          # so batches need no copy
    a, b = _plain_curve(nhwc, 3), _plain_curve(nchw, 3)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    resumed = Trainer(tiny_config("train.precision=fp32", "train.channels_last=off"), data)
    resumed.load_state_dict(nhwc.state_dict())            # checkpoints do not carry the layout
    # the tiny validation split has no natural reference: val_artefact is NaN in both
    assert resumed.evaluate() == pytest.approx(nhwc.evaluate(), rel=1e-5, abs=1e-6, nan_ok=True)


def test_graph_warm_up_leaves_no_trace():
    """Capturing a CUDA graph first runs real steps; trainable.graphs puts every state tensor back.
    Checked on the CPU: after the warm-up the pack steps exactly as an untouched twin does."""
    from trainable.graphs import warm_up
    data = load_data(tiny_config().data, "cpu")
    configs = [tiny_config(*ALL_CONTROLS, "train.precision=fp32"), tiny_config("train.precision=fp32", "train.seed=5")]
    warmed, twin = (PackedTrainer([Trainer(cfg, data) for cfg in configs]) for _ in range(2))
    plan = twin.plan_epoch()
    batch, lr = twin.next_batch(plan, 0), twin.lr_factors()[0]
    warm_up(warmed, batch, lr)
    a, b = warmed.step(batch, lr), twin.step(batch, lr)
    for key in b:                          # the second trial controls nothing: NaN control_* entries
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)
    for mine, theirs in ((warmed.g_params, twin.g_params), (warmed.g_buffers, twin.g_buffers),
                         (warmed.d_buffers, twin.d_buffers), (warmed.opt_g.exp_avg_sq, twin.opt_g.exp_avg_sq)):
        assert all(torch.equal(mine[n], theirs[n]) for n in theirs)      # BN statistics included
    assert torch.equal(warmed.opt_d.step, twin.opt_d.step)
