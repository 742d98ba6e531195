"""The pack server's bookkeeping without Ray: rounds, groups, the kept packs, late and stale trials;
and one packed round of real tiny trainers through the server's epoch function."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from sweep.pack_scheduler import PackScheduler
from sweep.pack_server import train_group, trainer_report
from tests.helpers import tiny_config
from trainable.data import load_data
from trainable.engine import Trainer


@dataclass
class FakeTrainer:
    signature: str = "same"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scheduler(pack: int, clock: Clock) -> tuple[PackScheduler, list]:
    built = []

    def make_pack(trainers):
        built.append(list(trainers))
        return object()
    return PackScheduler(pack, max_wait_s=10, stale_s=300, clock=clock,
                         signature=lambda t: t.signature, make_pack=make_pack), built


def test_round_waits_for_every_member_then_packs_at_most_pack_trials():
    clock = Clock()
    packs, built = scheduler(2, clock)
    trainers = {t: FakeTrainer() for t in "abcde"}
    for trial_id, trainer in trainers.items():
        packs.join(trial_id, trainer)
    for trial_id in "edcb":
        packs.ask(trial_id)
        assert not packs.ready()
    packs.ask("a")
    assert packs.ready()
    groups = packs.take_groups()
    assert [g.trial_ids for g in groups] == [("a", "b"), ("c", "d"), ("e",)]
    assert built == [[trainers["a"], trainers["b"]], [trainers["c"], trainers["d"]], [trainers["e"]]]
    assert not packs.waiting and not packs.ready()


def test_late_member_is_waited_for_at_most_max_wait():
    clock = Clock()
    packs, _ = scheduler(4, clock)
    for trial_id in "abc":
        packs.join(trial_id, FakeTrainer())
    packs.ask("a")
    clock.now += 5
    packs.ask("b")
    assert packs.missing() == ["c"] and not packs.ready()
    clock.now += 5          # 10 s after the round's first ask
    assert packs.ready()
    assert [g.trial_ids for g in packs.take_groups()] == [("a", "b")]


def test_pack_is_kept_while_the_group_trains_together_and_rebuilt_otherwise():
    clock = Clock()
    packs, built = scheduler(3, clock)
    for trial_id in "abc":
        packs.join(trial_id, FakeTrainer())

    def round_of(ids):
        for trial_id in ids:
            packs.ask(trial_id)
        return packs.take_groups()
    first = round_of("abc")[0]
    assert round_of("abc")[0].pack is first.pack and len(built) == 1
    assert round_of("ab")[0].pack is not first.pack            # c was late: a and b trained apart
    third = round_of("abc")[0]
    assert third.pack is not first.pack and len(built) == 3     # c's state lives in its trainer now
    packs.join("b", FakeTrainer())                              # b restarted from a checkpoint
    assert round_of("abc")[0].pack is not third.pack and len(built) == 4


def test_incompatible_trials_never_share_a_pack():
    clock = Clock()
    packs, _ = scheduler(4, clock)
    for trial_id, signature in zip("abcd", ["x", "y", "x", "y"]):
        packs.join(trial_id, FakeTrainer(signature))
        packs.ask(trial_id)
    assert sorted(g.trial_ids for g in packs.take_groups()) == [("a", "c"), ("b", "d")]


def test_silent_member_is_dropped_and_cannot_train_until_it_rejoins():
    clock = Clock()
    packs, _ = scheduler(2, clock)
    packs.join("a", FakeTrainer())
    packs.join("b", FakeTrainer())
    clock.now += 200
    packs.ask("a")
    clock.now += 150
    assert packs.drop_stale() == ["b"]
    assert packs.ready() and [g.trial_ids for g in packs.take_groups()] == [("a",)]
    with pytest.raises(KeyError, match="dropped after 300 s"):
        packs.ask("b")


def test_server_epoch_trains_real_trials_and_their_states_resume_on_the_plain_path():
    configs = [tiny_config("data.synthetic_size=64", "model.width=0.0625", f"train.seed={seed}",
                           f"loss.saturation.weight={weight}") for seed, weight in ((1, 5.0), (2, 20.0))]
    data = load_data(configs[0].data, "cpu")
    trainers = [Trainer(cfg, data) for cfg in configs]
    for trainer in trainers:
        trainer.evaluate()       # leaves the nets in eval mode; a pack must still train them
    packs = PackScheduler(2)
    for trial_id, trainer in zip("ab", trainers):
        packs.join(trial_id, trainer)
    for _ in range(2):
        packs.ask("a")
        packs.ask("b")
        (group,) = packs.take_groups()
        losses = train_group(group)
        assert len(losses) == 2 and losses[0]["loss_g"] != losses[1]["loss_g"]
    assert all(m.pack is group.pack for m in packs.members.values())
    metrics, state, grid = trainer_report(trainers[1])
    assert state["epoch"] == 2 and state["config"]["loss"]["saturation"]["weight"] == 20.0
    assert grid.dtype.name == "uint8" and "val_control_error" in metrics
    plain = Trainer(configs[1], data)
    plain.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(plain.generator.state_dict().values(),
                                                 trainers[1].generator.state_dict().values()))
    running_mean = next(v for k, v in state["generator"].items() if k.endswith("running_mean"))
    assert running_mean.abs().sum() > 0       # BatchNorm statistics moved: trained in train mode


def test_trials_that_trained_longer_than_stale_s_are_not_dropped():
    """Groups of a round train one after another; the last group's epoch may end more than stale_s
    after its trials asked. They were busy, not silent: the server marks them seen when it ends."""
    clock = Clock()
    packs, _ = scheduler(1, clock)
    for trial_id in "ab":
        packs.join(trial_id, FakeTrainer())
        packs.ask(trial_id)
    for group in packs.take_groups():
        clock.now += 200                          # each group's epoch takes 200 s; stale_s is 300
        packs.trained(group.trial_ids)
    assert packs.drop_stale() == []
    clock.now += 301                              # silent for longer than stale_s after that: dropped
    assert sorted(packs.drop_stale()) == ["a", "b"]
