"""The data interface (trainable.source): both sources keep the position contract, a pack shares one
source, and data.dataset=shards trains through `trainable.train`, a sweep and its final run."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import ROOT, launch_env, tiny_config, tracking_uri
from trainable.data import ColorData, load_data
from trainable.engine import Trainer
from trainable.loop import Interrupted, train_epoch
from trainable.packed import PackedTrainer
from trainable.shard_format import INDEX
from trainable.shards import main as convert
from trainable.stream import ShardSource
from trainable.train import main as train

SHARDS = ("data.dataset=shards", "data.image_size=16", "data.loader_workers=0")


def _tree(root, count: int) -> None:
    """count random colored 24px JPEGs in a class-per-folder tree."""
    for i in range(count):
        rng = np.random.default_rng(i)
        pixels = np.clip(rng.integers(0, 256, 3) + rng.integers(-40, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
        pixels[..., i % 3] = 255
        path = root / f"class{i % 2}" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    _tree(root / "src", 40)
    assert convert([str(root / "src"), str(root / "dst"), "--size", "24", "--shard-images", "8",
                    "--val-fraction", "0.2", "--workers", "1", "--quiet"]) == 0
    return root / "dst"


def _memory() -> ColorData:
    return load_data(tiny_config().data, "cpu")


def _batches(plan, start: int, stop: int) -> list[torch.Tensor]:
    return [plan.batch(i) for i in range(start, stop)]


@pytest.mark.parametrize("kind", ["memory", "shards"])
def test_a_plan_resumed_from_its_state_dict_gives_the_same_batches(kind, shards):
    source = _memory() if kind == "memory" else ShardSource(shards, 16, workers=0)
    whole = source.plan([torch.Generator().manual_seed(3)], 4, True)
    expected = _batches(whole, 0, len(whole))
    assert len(whole) == source.train_count // 4 and len(expected) >= 4
    interrupted = source.plan([torch.Generator().manual_seed(3)], 4, True)
    seen = _batches(interrupted, 0, 2)
    state = interrupted.state_dict()
    assert state["step"] == 2
    generator = torch.Generator().manual_seed(99)                        # wherever it stood
    resumed = source.resume(state, [generator], 4, True)
    seen += _batches(resumed, 2, len(resumed))
    assert all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))
    other = source.plan([torch.Generator().manual_seed(4)], 4, True)
    assert not torch.equal(other.batch(0), expected[0])                   # the order is the generator's



@pytest.mark.parametrize("kind", ["memory", "shards"])
def test_the_parts_of_two_ranks_make_up_the_one_process_batches(kind, shards):
    """Data-parallel ranks each read their own slice of every global batch, and nothing else."""
    source = _memory() if kind == "memory" else ShardSource(shards, 16, workers=0)
    whole = _batches(source.plan([torch.Generator().manual_seed(5)], 4, True), 0, 3)
    parts = [_batches(source.plan([torch.Generator().manual_seed(5)], 4, True, part=(r, 2)), 0, 3) for r in (0, 1)]
    for step, batch in enumerate(whole):
        assert parts[0][step].shape[1] == 2
        assert torch.equal(torch.cat([parts[0][step], parts[1][step]], 1), batch)
    with pytest.raises(ValueError, match="no part 0 of 3"):
        source.plan([torch.Generator()], 4, True, part=(0, 3))

def test_a_pack_on_shards_gives_each_trainer_its_own_batches(shards):
    source = ShardSource(shards, 16, workers=0)
    pack = source.plan([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], 4, True)
    alone = [source.plan([torch.Generator().manual_seed(s)], 4, True) for s in (1, 2)]
    for i in range(len(pack)):
        batch = pack.batch(i)
        assert batch.shape == (2, 4, 3, 16, 16)
        assert torch.equal(batch[0], alone[0].batch(i)[0]) and torch.equal(batch[1], alone[1].batch(i)[0])
    assert not torch.equal(batch[0], batch[1])


@pytest.mark.slow
def test_a_trainer_stopped_mid_epoch_on_shards_resumes_at_the_next_batch(shards):
    """epoch_step + epoch_rng alone say which batch comes next: a trainer built again from the state
    of one stopped after 2 steps ends the epoch with the weights of one never stopped."""
    cfg = tiny_config(*SHARDS, f"data.path={shards}", "train.batch_size=4", "train.precision=fp32")
    whole = Trainer(cfg)
    train_epoch(whole)
    stopped = Trainer(cfg)
    asked = iter(range(1000))
    with pytest.raises(Interrupted):
        train_epoch(stopped, stop=lambda: next(asked) == 1)          # asked after each step: stop after 2
    state = stopped.state_dict()
    assert state["epoch_step"] == 2
    resumed = Trainer(cfg)
    resumed.load_state_dict(state)
    train_epoch(resumed)
    assert resumed.step == whole.step
    for a, b in zip(whole.generator.parameters(), resumed.generator.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_packed_trials_train_on_one_shard_source(shards):
    cfgs = [tiny_config(*SHARDS, f"data.path={shards}", "train.batch_size=4", f"train.seed={s}") for s in (1, 2)]
    source = ShardSource(shards, 16, workers=0)
    trainers = [Trainer(cfg, source) for cfg in cfgs]
    losses = train_epoch(PackedTrainer(trainers))
    assert [t.step for t in trainers] == [source.train_count // 4] * 2
    assert all(np.isfinite(row["loss_l1"]) for row in losses) and losses[0]["loss_l1"] != losses[1]["loss_l1"]


@pytest.mark.slow
def test_train_cli_trains_two_epochs_on_shards_with_loader_workers(shards, tmp_path):
    folder = tmp_path / "run"
    argv = ["--set", "data.dataset=shards", "--set", f"data.path={shards}", "--set", "data.image_size=16",
            "--set", "data.loader_workers=1", "--set", "data.val_limit=4", "--set", "model.width=0.125",
            "--set", "train.batch_size=8", "--set", "train.epochs=2", "--set", "train.device=cpu",
            "--set", "train.threads=1", "--checkpoints-path", str(folder), "--no-progress"]
    assert train(argv) == 0
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2] and all(np.isfinite(row["loss_l1"]) for row in rows)
    state = torch.load(folder / "checkpoint" / "latest.pt", weights_only=False)
    assert state["step"] == 2 * (32 // 8)          # 40 images, 8 to validation: 32 train, 4 batches
    assert train(argv) == 0                        # already trained: the same command changes nothing
    from analysis.gallery import Gallery
    gallery = Gallery(3)                          # the report's gallery reads the validation shards
    gallery.add_checkpoint("run", folder / "checkpoint")
    assert gallery.real.shape == (3, 16, 16, 3) and gallery.rows[0][1].shape == (3, 16, 16, 3)


def _launch(tmp_path, *sets: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sweep.launch", str(ROOT / "search_spaces" / "smoke.yaml"),
               "--storage", str(tmp_path / "sweeps"), "--mlflow-uri", tracking_uri(tmp_path)]
    for assignment in sets:
        command += ["--set", assignment]
    return subprocess.run(command, cwd=tmp_path, env=launch_env(), capture_output=True, text=True, timeout=900)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("damage", ["version", "truncated"])
def test_the_launcher_refuses_bad_shards_in_one_line_before_ray(damage, shards, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in shards.iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    if damage == "version":
        index = json.loads((bad / INDEX).read_text())
        (bad / INDEX).write_text(json.dumps({**index, "version": 99}))
    else:
        victim = sorted(bad.glob("train-*.bin"))[0]
        victim.write_bytes(victim.read_bytes()[:-10])
    done = _launch(tmp_path, "data.dataset=shards", f"data.path={bad}")
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert str(bad) in lines[0] and ("version 99" in lines[0] if damage == "version" else "truncated" in lines[0])
    assert not (tmp_path / "sweeps").exists() and "Ray" not in done.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_a_sweep_and_its_final_run_train_on_shards(shards, tmp_path):
    done = _launch(tmp_path, "data.dataset=shards", f"data.path={shards}", "data.val_limit=6",
                   "data.loader_workers=1", "num_samples=2", "max_concurrent=2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sweep finished: 2 trials" in done.stdout
    spec = (tmp_path / "sweeps" / "smoke" / "colorsweep_spec.yaml").read_text()
    assert "dataset: shards" in spec and str(shards) in spec
    final = subprocess.run([sys.executable, "-m", "sweep.final", str(tmp_path / "sweeps" / "smoke"),
                            "--epochs", "1", "--set", "train.fid_every=0"],
                           cwd=tmp_path, env=launch_env(), capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    test = json.loads(next((tmp_path / "sweeps" / "smoke").glob("final*/test_metrics.json")).read_text())
    assert np.isfinite(test["test_l1"])
