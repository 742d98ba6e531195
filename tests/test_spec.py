"""Sweep specs: the shipped search spaces load; bad specs fail with one line naming the key."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from sweep.launch import main
from sweep.spec import (SpecError, comparable, incompatibility, load_spec, parse_duration, parse_spec,
                        resolved)

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
GOOD = {
    "name": "t",
    "config": {"data": {"dataset": "synthetic"}, "model": {"width": 0.125}},
    "space": {"loss.saturation.weight": {"type": "loguniform", "low": 1, "high": 50},
              "loss.saturation.target": {"type": "uniform", "low": 0.1, "high": 0.9}},
    "num_samples": 3,
}


def with_changes(**changes) -> dict:
    return {**GOOD, **changes}


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_spaces_load(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert 1 <= spec.max_concurrent <= 10
    assert spec.space


def test_defaults_and_sets():
    spec = parse_spec(GOOD, ["num_samples=20", "model.width=0.25", "sampler.seed=7", "time_budget=1h30m"])
    assert [(o.metric, o.mode) for o in spec.objectives] == [("val_control_error", "min"),
                                                             ("val_realism_abhist", "min")]
    assert (spec.num_samples, spec.max_concurrent, spec.seed) == (20, 10, 7)
    assert spec.config.model.width == 0.25
    assert spec.time_budget_s == 5400
    assert spec.sampler == "tpe" and spec.scheduler == "none"


def test_fixed_entries_go_to_the_base_config():
    space = {**GOOD["space"], "loss.l1_weight": {"type": "fixed", "value": 50}}
    spec = parse_spec(with_changes(space=space))
    assert spec.config.loss.l1_weight == 50 and "loss.l1_weight" not in spec.space
    assert spec.trial_config({"loss.saturation.weight": 3.0}).loss.saturation.weight == 3.0


@pytest.mark.parametrize("text, seconds", [("11h30m", 41400), ("90m", 5400), ("45s", 45), (600, 600), ("0h", None),
                                           (0, None)])
def test_durations(text, seconds):
    assert parse_duration("time_budget", text) == seconds


@pytest.mark.parametrize("changes, key", [
    ({"colour": 1}, "colour:"),
    ({"overrides": {1: 2}}, "overrides:"),
    ({"overrides": {"train.precision": "fp16"}, "pack": 2}, "config.train.precision:"),
    ({"space": {"loss.saturation.weight": {"type": "gaussian", "low": 1, "high": 2}}},
     "space.loss.saturation.weight.type:"),
    ({"space": {"loss.saturation.target": {"type": "uniform", "low": 0.9, "high": 0.1}}},
     "space.loss.saturation.target.low:"),
    ({"space": {"loss.saturation.weight": {"type": "uniform", "low": -5, "high": 2}}},
     "space.loss.saturation.weight:"),
    ({"space": {"loss.saturaton.weight": {"type": "uniform", "low": 1, "high": 2}}},
     "space.loss.saturaton.weight:"),
    ({"objectives": [{"metric": "val_fid", "mode": "min"}]}, "objectives[0].metric:"),
    ({"objectives": [{"metric": "val_psnr", "mode": "up"}]}, "objectives[0].mode:"),
    ({"sampler": {"type": "bayes"}}, "sampler.type:"),
    ({"scheduler": {"type": "asha", "grace_period": 0}}, "scheduler.grace_period:"),
    ({"time_budget": "soon"}, "time_budget:"),
    ({"config": {"model": {"widht": 1}}}, "config.model.widht:"),
    ({"num_samples": 0}, "num_samples:"),
    ({"report_every": 0}, "report_every:"),
    ({"report_every": "10m"}, "report_every:"),
    ({"report_every": "20 steps", "pack": 2}, "report_every:"),
])
def test_bad_specs_name_the_key(changes, key):
    with pytest.raises(SpecError) as info:
        parse_spec(with_changes(**changes))
    assert str(info.value).startswith(key), str(info.value)
    assert "\n" not in str(info.value)


def test_bad_spec_exits_2_before_ray_starts(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "bad.yaml"
    bad = with_changes(space={"loss.hue.weight": {"type": "uniform", "low": -1, "high": 5}})
    spec.write_text(yaml.safe_dump(bad))
    monkeypatch.setitem(sys.modules, "ray", None)      # an `import ray` from here on raises ImportError
    code = main([str(spec), "--storage", str(tmp_path / "sweeps")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: space.loss.hue.weight:") and len(err.splitlines()) == 1
    assert not (tmp_path / "sweeps").exists()


def test_unsafe_yaml_is_refused(tmp_path):
    spec = tmp_path / "evil.yaml"
    spec.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(spec)


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    spec = tmp_path / "typo.yaml"
    spec.write_text("name: t\nspace:\n  loss.saturation.weight: {type: uniform, low: 1 high: 2}\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert str(info.value).startswith(f"{spec}:3:") and "not valid YAML" in str(info.value)
    assert "\n" not in str(info.value) and "<unicode string>" not in str(info.value)


def test_incompatible_changes_are_named():
    old = resolved(parse_spec(GOOD))
    assert incompatibility(old, resolved(parse_spec(GOOD, ["time_budget=2h"]))) is None
    changed = incompatibility(old, resolved(parse_spec(GOOD, ["model.width=0.5"])))
    assert changed.startswith("config.model.width was 0.125, now 0.5")


def test_relative_paths_resolve_against_the_launch_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from_yaml = parse_spec(with_changes(config={"data": {"dataset": "npz", "path": "data/x.npz"}}))
    assert from_yaml.config.data.path == str(tmp_path / "data" / "x.npz")
    from_set = parse_spec(GOOD, ["data.path=./dataset/../cifar"])
    assert from_set.config.data.path == str(tmp_path / "cifar")
    assert parse_spec(GOOD, ["data.path=/abs/cifar"]).config.data.path == "/abs/cifar"
    assert parse_spec(GOOD).config.data.path == ""
    assert parse_spec(GOOD, ["data.path=x"], base=tmp_path / "elsewhere").config.data.path == \
        str(tmp_path / "elsewhere" / "x")


def test_a_saved_relative_path_still_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    current = resolved(parse_spec(GOOD, ["data.path=./dataset/cifar10"]))
    saved = yaml.safe_load(yaml.safe_dump(current))
    saved["config"]["data"]["path"] = "./dataset/cifar10"          # as sweeps saved it before
    assert incompatibility(saved, current).startswith("config.data.path was './dataset/cifar10'")
    assert incompatibility(comparable(saved), current) is None
    saved["config"]["data"]["path"] = "./other"
    assert incompatibility(comparable(saved), current).startswith("config.data.path was")


def test_a_saved_spec_without_keys_added_since_still_resumes():
    current = resolved(parse_spec(GOOD))
    saved = yaml.safe_load(yaml.safe_dump(current))
    del saved["config"]["data"]["flip"]                             # a key older code did not have
    assert incompatibility(comparable(saved), current) is None
    saved["config"]["model"]["width"] = 0.5
    assert incompatibility(comparable(saved), current).startswith("config.model.width was 0.5")


@pytest.mark.integration
def test_checking_a_spec_imports_no_torch():
    """Names shared by spec checks and the trainer live in torch-free modules (trainable.names,
    trainable.layout, analysis.pareto); a fresh interpreter shows what a spec check pulls in."""
    import subprocess
    import sys
    code = ("import sys; from sweep.spec import load_spec; import trainable.config, trainable.layout; "
            f"load_spec({str(SPACES / 'multi.yaml')!r}, ['pack=2', 'max_concurrent=2']); "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=SPACES.parent, check=True)
    assert found.stdout.strip() == "[]"


def test_kid_objective_needs_kid_every():
    objectives = [{"metric": "val_kid_controlled"}, {"metric": "val_artefact"}]
    with pytest.raises(SpecError, match=r"^objectives\[0\]\.metric: val_kid_controlled needs config\.train\.kid_every"):
        parse_spec(with_changes(objectives=objectives))
    spec = parse_spec(with_changes(objectives=objectives), ["train.kid_every=2"])
    assert [o.metric for o in spec.objectives] == ["val_kid_controlled", "val_artefact"]
