"""Packed sweeps end to end (real local Ray, real Optuna, real MLflow in a temp dir): trials trained
together by the pack server are still separate trials, runs, checkpoints and resumes."""
from __future__ import annotations

import re
import threading

import pytest
import yaml

from sweep.launch import main
from tests.helpers import SMOKE, sigkill_then_resume, tiny_config, trial_dirs, trial_runs
from trainable.checkpoint import load_checkpoint
from trainable.config import from_dict, to_dict
from trainable.engine import Trainer

PACK = ("--set", "pack=2")


def test_pack_with_a_searched_shared_key_is_refused(tmp_path, capsys):
    spec = yaml.safe_load(SMOKE.read_text())
    spec["space"]["model.width"] = {"type": "choice", "values": [0.0625, 0.125]}
    path = tmp_path / "width.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = main([str(path), "--storage", str(tmp_path / "sweeps"), *PACK])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: space.model.width: cannot be searched with pack > 1"), err
    assert len(err.splitlines()) == 1
    assert main([str(path), "--storage", str(tmp_path / "sweeps"), "--set", "pack=5"]) == 2
    assert "pack: must be <= max_concurrent (4), got 5" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.slow
def test_packed_sweep_resumes_after_sigkill_and_keeps_every_trial_its_own(tmp_path):
    # Packed smoke epochs take a fraction of a second: more of them leave time to kill midway.
    epochs = 12
    done = sigkill_then_resume(tmp_path, epochs, *PACK)
    packed = re.search(r"packing: (\d+) trial epochs in (\d+) packed epochs", done.stdout)
    assert packed and int(packed.group(2)) < int(packed.group(1)), done.stdout[-2000:]
    weights = {r.data.tags["trial_id"]: float(r.data.params["loss.saturation.weight"]) for r in trial_runs(tmp_path)}
    assert len(set(weights.values())) == 4
    seen = {}
    for trial_dir in trial_dirs(tmp_path / "sweeps" / "smoke"):
        checkpoint = sorted(trial_dir.glob("checkpoint_*"))[-1]
        assert {"latest.pt", "samples.png", "generator.pt", "report.json"} <= {p.name for p in checkpoint.iterdir()}
        state = load_checkpoint(checkpoint)
        trainer = Trainer(from_dict(state["config"]))
        trainer.load_state_dict(state)
        assert trainer.epoch == epochs
        seen[trial_dir.name] = trainer.cfg.loss.saturation.weight
    assert sorted(seen.values()) == sorted(weights.values())    # each checkpoint is its own trial's


@pytest.mark.integration
@pytest.mark.slow
def test_pack_server_keeps_a_late_live_trial_and_drops_a_dead_one():
    """How long a round waits is PackScheduler's rule (tested on a fake clock in test_pack_scheduler);
    here the server on a real Ray: a round goes on without a silent trial, which stays a member while
    its process lives and is dropped once it is dead."""
    import ray

    from sweep.pack_server import start_pack_server

    @ray.remote(num_cpus=0)
    class BusyTrial:            # a live Tune trial: its actor is busy in train() and answers nothing
        def train(self):
            threading.Event().wait()

    ray.init(address="local", include_dashboard=False, logging_level="warning")
    try:
        server = start_pack_server("probe", 2, 2, {})
        config = to_dict(tiny_config("data.synthetic_size=64", "model.width=0.0625"))
        trials = {name: BusyTrial.remote() for name in "ab"}
        for name, trial in trials.items():
            trial.train.remote()
            assert ray.get(server.join.remote(name, config, None, trial)) == 0
        ray.get(server.advance.remote("a"))                 # b never asked: a trained alone
        assert ray.get(server.stats.remote()) == (1, 1)
        assert ray.get(server.report.remote("b"))[1]["epoch"] == 0      # b alive: still a member
        ray.kill(trials["b"])                               # as when Tune stops b
        ray.get(server.advance.remote("a"))
        assert ray.get(server.stats.remote()) == (2, 2)
        with pytest.raises(ray.exceptions.RayTaskError, match="restart it to rejoin"):
            ray.get(server.report.remote("b"))                          # b dead: dropped
    finally:
        ray.shutdown()
