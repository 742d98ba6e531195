"""A two-node Ray cluster on this machine, kept on loopback, with the smoke sweep joined by `--address`.

The "Trying it on one machine" commands of docs/scaling.md, run for real: a head `ray start --head
--node-ip-address=127.0.0.1` with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (so Ray keeps 127.0.0.1 and binds
to it), a second node and the launcher joining it as `127.1:PORT` with GRPC_DNS_RESOLVER=native, token
authentication on. Every port and the temp dir are the test's own, so other Ray instances on the machine
are left alone; teardown signals only the sessions this test started."""
from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import (epoch_steps, launch_command, launch_env, trial_dirs, trial_runs,
                           trial_statuses, wait_until)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORTS_PER_CLUSTER = 100  # head: base+0..9 and workers base+20..59; second node: base+10..19 and base+60..99


def _free_block() -> int:
    """A base port whose whole block is free on every address; below Linux's ephemeral range."""
    bases = list(range(20000, 32000, PORTS_PER_CLUSTER))
    random.shuffle(bases)
    for base in bases:
        try:
            for port in range(base, base + PORTS_PER_CLUSTER):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
    pytest.fail("no free block of ports")


def _node_ports(base: int) -> list[str]:
    return [f"--object-manager-port={base + 1}", f"--node-manager-port={base + 2}",
            f"--dashboard-agent-listen-port={base + 3}", f"--dashboard-agent-grpc-port={base + 4}",
            f"--runtime-env-agent-port={base + 5}", f"--metrics-export-port={base + 6}"]


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # fields after "(comm)": state ppid pgrp session


def _pids_in(sessions: set[int]) -> set[int]:
    """Every live process of these sessions: Ray's workers get process groups of their own, not sessions."""
    return {int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _session_of(int(p.name)) in sessions}


def _is_loopback(endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0].strip("[]").split("%")[0]
    if host.startswith("::ffff:"):
        host = host[len("::ffff:"):]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*" or "0.0.0.0" style wildcards parse as not loopback
        return False


def _off_loopback(sessions: set[int]) -> list[str]:
    """ss rows (TCP and UDP, listening and connected) of our processes that touch a non-loopback address."""
    pids = _pids_in(sessions)
    out = subprocess.run(["ss", "-Htuanp"], capture_output=True, text=True, check=True).stdout
    bad = []
    for line in out.splitlines():
        fields = line.split()
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if len(fields) < 6 or not owners & pids:
            continue
        local, peer = fields[4], fields[5]
        listening = peer.endswith(":*")
        if not _is_loopback(local) or (not listening and not _is_loopback(peer)):
            bad.append(line)
    return bad


def _listeners(sessions: set[int]) -> set[str]:
    """Local addresses of our TCP listeners, "[::ffff:127.0.0.1]:P" written as "127.0.0.1:P"."""
    pids = _pids_in(sessions)
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3].replace("[::ffff:", "").replace("]", "") for line in out.splitlines()
            if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids}


def _wait_listening(process: subprocess.Popen, port: int, log: Path) -> None:
    listening = wait_until(lambda: any(a.endswith(f":{port}") for a in _listeners({process.pid})), process, 0.5)
    assert listening, log.read_text()[-3000:]


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each `ray start --block` (it stops its node), then SIGKILL what is left of its session."""
    for process in processes:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    sessions = {p.pid for p in processes}
    for pid in _pids_in(sessions):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for process in processes:
        process.wait(timeout=10)


def _node_of(pid: int, temp_dirs: dict[str, Path]) -> str | None:
    """Which node ran the worker process `pid`: each node writes worker-<id>-<job>-<pid>.out in its temp dir."""
    for node, temp_dir in temp_dirs.items():
        if list(temp_dir.glob(f"session_*/logs/worker-*-{pid}.out")):
            return node
    return None


@pytest.fixture
def cluster(tmp_path):
    if shutil.which("ss") is None:
        pytest.skip("`ss` (iproute2) is missing: cannot check which addresses Ray listens on")
    base = _free_block()
    root = Path(tempfile.mkdtemp(prefix="cs2n-", dir="/tmp"))  # short: Ray's unix socket paths live here
    temp_dirs = {"head": root / "head", "node2": root / "node2"}
    token = secrets.token_hex(32)
    env = dict(launch_env(), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    for name in ("RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "GRPC_DNS_RESOLVER"):
        env.pop(name, None)
    head_env = dict(env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    join_env = dict(env, GRPC_DNS_RESOLVER="native")
    address = f"127.1:{base}"
    processes = []
    try:
        head_log = open(tmp_path / "head.log", "w")
        processes.append(subprocess.Popen(
            ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={base}",
             f"--temp-dir={temp_dirs['head']}", "--include-dashboard=false", *_node_ports(base),
             f"--min-worker-port={base + 20}", f"--max-worker-port={base + 59}",
             "--num-cpus=1", '--resources={"head": 1}', "--disable-usage-stats"],
            env=head_env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_listening(processes[0], base, tmp_path / "head.log")  # the GCS
        node_log = open(tmp_path / "node2.log", "w")
        processes.append(subprocess.Popen(
            ["ray", "start", "--block", f"--address={address}", f"--temp-dir={temp_dirs['node2']}",
             *_node_ports(base + 10), f"--min-worker-port={base + 60}", f"--max-worker-port={base + 99}",
             "--num-cpus=1", '--resources={"node2": 1}', "--disable-usage-stats"],
            env=join_env, stdout=node_log, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_listening(processes[1], base + 12, tmp_path / "node2.log")  # the second raylet
        yield {"address": address, "env": join_env, "processes": processes, "temp_dirs": temp_dirs}
    finally:
        _stop(processes)
        shutil.rmtree(root, ignore_errors=True)


def test_smoke_sweep_on_two_loopback_nodes(tmp_path, cluster):
    log = open(tmp_path / "launch.log", "w")
    driver = subprocess.Popen(launch_command(tmp_path, "--address", cluster["address"]), cwd=tmp_path,
                              env=cluster["env"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sessions = {p.pid for p in cluster["processes"]} | {driver.pid}
    off_loopback, listeners = [], set()
    try:
        while True:  # sample the sockets of the cluster and the driver each second until the sweep ends
            off_loopback += _off_loopback(sessions)
            listeners |= _listeners(sessions)
            try:
                driver.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                pass
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    output = (tmp_path / "launch.log").read_text()
    assert driver.returncode == 0 and "sweep finished: 4 trials" in output, output[-3000:]
    assert not off_loopback, "\n".join(sorted(set(off_loopback)))
    gcs_port = cluster["address"].split(":")[1]
    assert f"127.0.0.1:{gcs_port}" in listeners, listeners  # the sampling saw the cluster

    sweep_dir = tmp_path / "sweeps" / "smoke"
    statuses = trial_statuses(sweep_dir)
    assert len(statuses) == 4 and set(statuses.values()) == {"TERMINATED"}, statuses
    nodes = {}
    for trial_dir in trial_dirs(sweep_dir):
        first = json.loads((trial_dir / "result.json").read_text().splitlines()[0])
        assert first["node_ip"] == "127.0.0.1"
        nodes[first["trial_id"]] = _node_of(first["pid"], cluster["temp_dirs"])
    assert set(nodes.values()) == {"head", "node2"}, nodes  # trials ran on both nodes
    runs = trial_runs(tmp_path)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(statuses)
    assert all(epoch_steps(tmp_path, r.info.run_id) == [1, 2] for r in runs)
