"""The README as a reader uses it. Every command of its fenced bash blocks is either run here as written
(the cheap ones) or listed in COVERED_ELSEWHERE with the test that runs it; every `python -m MODULE`
it or docs/ names is a module of this project with a `main`, and every flag given to one parses; every
link into the repository leads to a file and a heading that exist; no internal issue number shows."""
from __future__ import annotations

import ast
import csv
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, launch_env, trial_dirs

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PACKAGES = ("trainable", "sweep", "analysis", "bench")
README_SWEEP = "sweeps/saturation"       # the README's sweep folder; the tests read the smoke sweep there
MAX_README_LINES = 200                   # a guide; the reference lives in docs/
# Commands the README shows that this file does not run (a GPU-sized sweep, hours of training, a
# server), each with what runs it. `tests/...::name` entries are checked to exist.
COVERED_ELSEWHERE = {
    "python -m trainable.shards ./places365/train_256_places365standard.tar ./dataset/places-shards":
        "tests/test_shards.py::test_places365_layout_reads_its_file_list_as_folder_and_as_tar",
    "python -m sweep.dashboard sweeps/saturation":
        "tests/test_dashboard.py::test_dashboard_answers_for_the_sweeps_study",
    "python -m pip install torch==2.13.0": ".ci/run",
    "python -m pip install -e .[dev]": ".ci/run",
    "python -m sweep.launch search_spaces/saturation.yaml":
        "tests/test_main_job.py::test_readme_main_job_finds_the_data_at_the_readme_path",
    "python -m pytest -q": ".ci/run",
    "mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db":
        "tests/test_launch.py::test_smoke_sweep_end_to_end",           # the launcher prints this line
    "python -m sweep.final sweeps/saturation":
        "tests/test_final.py::test_final_survives_sigkill_and_exports_a_working_model",
    "python -m sweep.colorize sweeps/saturation/final/generator.pt photo.jpg -o photo_color.png":
        "tests/test_analysis_colab.py::test_colab_commands_run_on_the_smoke_sweep",
    "MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db mlflow models serve -m models:/saturation/1 --env-manager local "
    "--host 127.0.0.1 --port 5001":
        "tests/test_serving.py::test_served_model_answers_a_png_and_refuses_bad_requests",
    "python -m sweep.app sweeps/saturation/final/generator.pt":
        "tests/test_app.py::test_page_gives_sweep_colorize_pixels_strip_and_download",
    "python -m trainable.train --dataset cifar10 --dataset-path ./dataset/cifar10 --checkpoints-path runs/one "
    "--epochs 30 --desired-saturation 0.3 --saturation-weight 20":
        "tests/test_train.py::test_seed_flags_parse_to_the_right_config",
}
RUN_HERE = {
    "python -m analysis.rank sweeps/saturation --top 5 --csv ranking.csv",
}


def bash_commands(path: Path) -> list[list[str]]:
    """Each command of the file's ```bash blocks as tokens: continuations joined, comments dropped,
    `a && b` as two commands."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                commands.append(tokens[:cut])
                tokens = tokens[cut + 1:]
    return commands


def project_module(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(module, argv) of `[VAR=value ...] python -m MODULE ARGS` for a module of this project."""
    while tokens and re.match(r"^[A-Z_]+=", tokens[0]):
        tokens = tokens[1:]
    if tokens[:2] != ["python", "-m"] or tokens[2].split(".")[0] not in PACKAGES:
        return None
    return tokens[2], tokens[3:]


def module_calls(paths: list[Path]) -> list[tuple[str, list[str]]]:
    return [call for path in paths for tokens in bash_commands(path) if (call := project_module(tokens))]


def readme_modules() -> list[str]:
    return sorted({module for module, _ in module_calls([README])})


def test_every_readme_command_is_run_here_or_covered_by_a_named_test():
    shown = {" ".join(tokens) for tokens in bash_commands(README)}
    assert shown == set(COVERED_ELSEWHERE) | RUN_HERE, "README commands changed: update this test's lists"
    ci = (ROOT / ".ci" / "run").read_text()
    for command, covered in COVERED_ELSEWHERE.items():
        if covered == ".ci/run":
            assert command in ci.replace("'", ""), command
            continue
        file, name = covered.split("::")
        tree = ast.parse((ROOT / file).read_text())
        assert name in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, covered


def test_every_python_m_module_is_ours_with_a_main():
    """README and docs/: the module exists in this tree, has a top-level main and runs it as __main__."""
    modules = {module for module, _ in module_calls([README, *DOCS])}
    assert {"sweep.launch", "analysis.rank", "sweep.final", "sweep.colorize", "sweep.app"} <= modules
    for module in sorted(modules):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, f"python -m {module}: no such module"
        assert Path(spec.origin).is_relative_to(ROOT), f"{module} is not this tree's: {spec.origin}"
        tree = ast.parse(Path(spec.origin).read_text())
        names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert "main" in names, f"{module} has no main"
        assert "__main__" in ast.unparse([n for n in tree.body if isinstance(n, ast.If)][-1].test), module


def test_the_readme_is_a_guide_without_internal_issue_numbers():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; reference goes into docs/"
    assert lines[:4] == [
        "```bash",
        "python -m pip install torch==2.13.0 && python -m pip install -e '.[dev]' && "
        "python -m sweep.launch search_spaces/saturation.yaml",
        "python -m pytest -q",
        "```"]
    for path in [README, *DOCS]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"\bissues? #?\d", line, re.I), f"{path.name}:{number}: {line}"


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the file's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_link_into_the_repository_leads_somewhere():
    for path in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            name = linked.relative_to(ROOT).as_posix() if linked.is_relative_to(ROOT) else str(linked)
            assert linked.exists(), f"{path.name}: link to {target}: no such file"
            if anchor:
                assert anchor in heading_anchors(linked), f"{path.name}: link to {target}: no such heading"


@pytest.mark.slow
def test_every_flag_the_readme_and_docs_give_parses():
    """Each `python -m sweep|analysis|trainable...` command of README.md and docs/, its arguments as
    written, through the module's own parser (every module the README names has a build_parser)."""
    in_readme = readme_modules()
    for module, argv in module_calls([README, *DOCS]):
        if module.startswith("bench."):
            continue                     # bench scripts keep their parser inside main
        loaded = importlib.import_module(module)
        if not hasattr(loaded, "build_parser"):
            assert module not in in_readme, f"python -m {module}: no build_parser to check its flags with"
            continue
        try:
            loaded.build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"python -m {module} {' '.join(argv)}: its flags do not parse")


@pytest.mark.slow
@pytest.mark.integration
def test_every_readme_module_answers_help():
    """The README's "every command takes --help", for each module it names, in a real process."""
    running = {module: subprocess.Popen([sys.executable, "-m", module, "--help"], cwd=ROOT, env=launch_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for module in readme_modules()}
    for module, process in running.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{module} --help: {err[-1000:]}"
        assert out.startswith(f"usage: python -m {module}"), out[:200]
        assert not re.search(r"\bissues? #?\d", out, re.I), f"{module} --help names an issue number"


@pytest.mark.slow
@pytest.mark.integration
def test_readme_rank_runs_as_written_on_the_smoke_sweep(smoke_sweep_dir, tmp_path):
    (command,) = RUN_HERE
    argv = [str(smoke_sweep_dir) if token == README_SWEEP else token for token in shlex.split(command)[1:]]
    done = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=launch_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    with open(tmp_path / "ranking.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert len(rows) == len(trial_dirs(smoke_sweep_dir))
    ranked = sorted((int(float(row["rank"])), row["trial_id"]) for row in rows if row["rank"])
    assert [rank for rank, _ in ranked] == list(range(1, len(rows) + 1)), ranked   # every smoke trial finishes
    assert ranked[0][1] in done.stdout
