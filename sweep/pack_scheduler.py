"""Which packed trials train together, and when: the pack server's bookkeeping, without Ray.

Each trial of a packed sweep is a member: its own `Trainer` (built in the server on shared data).
A member asks for one epoch at a time; the server waits until every live member has asked (a
round), then steps them in groups of at most `pack` trials (`trainable.loop.steps_for`). A member that is
late is waited for at most `max_wait_s` after the first ask of the round, so one slow or dead trial
(ASHA stops trials by killing their process, without a goodbye) cannot hold the others. A member
not heard from for `stale_s` is dropped and its trainer freed.

A group's pack (its StepGroup) is kept while the same trainers train together: packed, its stacked
tensors are the truth, and rebuilding would copy every weight and recapture the CUDA graph. It is
rebuilt when the group changes or a member trained elsewhere (a rejoin, a round without it).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from trainable.loop import steps_for
from trainable.packed import pack_signature


def shared_signature(trainer) -> Hashable:   # PackedTrainer's own check, as a key
    return pack_signature(trainer.cfg)


@dataclass
class Member:
    trainer: object
    last_seen: float
    probe: object = None             # whatever the server uses to ask "is this trial alive?"
    pack: object = None              # the StepGroup it last trained in (packed: its state's holder)


@dataclass
class Group:
    trial_ids: tuple[str, ...]
    pack: object                     # a trainable.steps.StepGroup (graphed: it holds its CUDA graph)


class PackScheduler:
    def __init__(self, pack: int, max_wait_s: float = 10.0, stale_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic,
                 signature: Callable[[object], Hashable] = shared_signature,
                 make_pack: Callable[[list], object] = steps_for):
        self.pack_size, self.max_wait_s, self.stale_s = pack, max_wait_s, stale_s
        self.clock, self.signature, self.make_pack = clock, signature, make_pack
        self.members: dict[str, Member] = {}
        self.waiting: dict[str, float] = {}      # trial id → when it asked
        self.groups: dict[tuple[str, ...], Group] = {}

    def join(self, trial_id: str, trainer, probe=None) -> None:
        """A new trial, or a trial that restarted (its old trainer is replaced)."""
        self.leave(trial_id)
        self.members[trial_id] = Member(trainer, self.clock(), probe)

    def leave(self, trial_id: str) -> None:
        self.members.pop(trial_id, None)
        self.waiting.pop(trial_id, None)
        for key in [key for key in self.groups if trial_id in key]:
            del self.groups[key]

    def member(self, trial_id: str) -> Member:
        if trial_id not in self.members:
            raise KeyError(f"trial {trial_id} is not in the pack (never joined, or dropped after "
                           f"{self.stale_s:.0f} s of silence); restart it to rejoin")
        member = self.members[trial_id]
        member.last_seen = self.clock()
        return member

    def ask(self, trial_id: str) -> None:
        self.member(trial_id)
        self.waiting[trial_id] = self.clock()

    def missing(self) -> list[str]:
        """Members of this round that have not asked yet."""
        return [t for t in self.members if t not in self.waiting]

    def trained(self, trial_ids: tuple[str, ...]) -> None:
        """A group's epoch just ended: its members were busy, not silent, however long it took."""
        now = self.clock()
        for trial_id in trial_ids:
            if trial_id in self.members:
                self.members[trial_id].last_seen = now

    def drop_stale(self) -> list[str]:
        now = self.clock()
        stale = [t for t, m in self.members.items() if t not in self.waiting and now - m.last_seen > self.stale_s]
        for trial_id in stale:
            self.leave(trial_id)
        return stale

    def ready(self) -> bool:
        """A round can start: everyone asked, or the first ask waited `max_wait_s`."""
        if not self.waiting:
            return False
        return not self.missing() or self.clock() - min(self.waiting.values()) >= self.max_wait_s

    def take_groups(self) -> list[Group]:
        """The waiting members split into packs of ≤ `pack` compatible trials; the round ends."""
        by_signature: dict[Hashable, list[str]] = {}
        for trial_id in sorted(self.waiting):
            by_signature.setdefault(self.signature(self.members[trial_id].trainer), []).append(trial_id)
        self.waiting.clear()
        groups = []
        for ids in by_signature.values():
            for start in range(0, len(ids), self.pack_size):
                groups.append(self._group(tuple(ids[start:start + self.pack_size])))
        return groups

    def _group(self, trial_ids: tuple[str, ...]) -> Group:
        group = self.groups.get(trial_ids)
        if group is None or any(self.members[t].pack is not group.pack for t in trial_ids):
            for key in [key for key in self.groups if set(key) & set(trial_ids)]:
                del self.groups[key]
            group = Group(trial_ids, self.make_pack([self.members[t].trainer for t in trial_ids]))
            self.groups[trial_ids] = group
            for trial_id in trial_ids:
                self.members[trial_id].pack = group.pack
        return group
