"""Elasticity: cold start from zero, and the time from a load step to added capacity.

Starts a platform (``openeas up --detach``) in a fresh ``$OPENEAS_HOME`` on free ports and
the add/sub ONNX model, then measures on the product's path (``eascmd create``, requests
through the platform's gateway with ``tritonclient``):

* **cold start from zero**: a ``min: 0`` service waits at zero instances; the latency of
  the first request, which the gateway holds while one instance starts.  The peer, in
  the same run and interleaved, is the floor under it: a bare ``openeas-server`` started
  on the same repository until ``/v2/health/ready``, plus one request.
* **load step to capacity**: a one-instance service with a ``qps`` strategy receives an
  open-loop load of ``--step-qps`` requests per second (threshold ``--threshold``, so the
  autoscaler wants ``ceil(step / threshold)`` instances); measured from the first request
  of the step to the autoscaler's decision and to the moment all wanted instances are
  ready.  Its floor is the same bare start.

Usage::

    .venv/bin/python benchmarks/elastic.py --repeat 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import tritonclient.http as httpclient
from results import write_results

from openeas.testing.onnx_models import (
    ADD_SUB_CONFIG,
    add_sub_inputs,
    write_add_sub_model,
    write_model_config,
)
from openeas.testing.server import free_port, start_server

HERE = Path(__file__).resolve().parent
PY = sys.executable


class Platform:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "OPENEAS_HOME": str(home)}
        self.http_port = free_port()

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=False)

    def eascmd(self, *args: str) -> str:
        result = self.run(PY, "-m", "openeas.cli.eascmd", *args)
        if result.returncode != 0:
            sys.exit(f"eascmd {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def desc(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.eascmd("desc", name, "--json")))

    def ready_instances(self, name: str) -> int:
        insts = json.loads(self.eascmd("instances", name, "--json"))
        return sum(1 for i in insts if i["status"] == "Running" and i.get("ready", True))

    def create(self, name: str, repo: Path, autoscaler: dict[str, Any]) -> str:
        spec = self.home / f"{name}.json"
        spec.write_text(
            json.dumps(
                {
                    "name": name,
                    "processor": "triton",
                    "processor_params": [f"--model-repository={repo}"],
                    "metadata": {
                        "instance": 1,
                        "cpu": 1,
                        "memory": 2000,
                        "rpc.keepalive": 60000,
                    },
                    "autoscaler": autoscaler,
                }
            )
        )
        self.eascmd("create", str(spec))
        return str(self.desc(name)["token"])

    def client(self, name: str) -> httpclient.InferenceServerClient:
        url = f"127.0.0.1:{self.http_port}/api/predict/{name}"
        return httpclient.InferenceServerClient(url, network_timeout=120)


def _poll(check: Any, timeout: float = 300, every: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.perf_counter()
        time.sleep(every)
    sys.exit("timed out waiting")


def cold_start(plat: Platform, repo: Path, repeat: int) -> tuple[list[float], list[float]]:
    name = "bench_zero"
    token = plat.create(
        name,
        repo,
        {
            "min": 0,
            "max": 1,
            "scaleStrategies": [{"metricName": "qps", "threshold": 100}],
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": 0},
                "onZero": {"scaleDownGracePeriodSeconds": 1},
            },
        },
    )
    zero_s, bare_s = [], []
    headers = {"Authorization": token}
    for i in range(repeat):
        _poll(
            lambda: plat.desc(name)["replicas"] == 0 and plat.ready_instances(name) == 0, every=0.3
        )
        client = plat.client(name)
        started = time.perf_counter()
        client.infer("simple", add_sub_inputs(httpclient), headers=headers)
        zero_s.append(time.perf_counter() - started)
        client.close()

        started = time.perf_counter()
        server = start_server(repo, log_path=plat.home / f"bare-{i}.log")
        bare = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        bare.infer("simple", add_sub_inputs(httpclient))
        bare_s.append(time.perf_counter() - started)
        bare.close()
        server.stop()
        print(
            f"run {i}: first request at zero {zero_s[-1]:.2f}s, bare start + request {bare_s[-1]:.2f}s"
        )
    plat.eascmd("delete", "-y", name)
    return zero_s, bare_s


class OpenLoad:
    """``rate`` requests per second, each on its own thread slot (open loop)."""

    def __init__(self, plat: Platform, name: str, token: str, rate: float, threads: int = 8):
        self.plat, self.name, self.token = plat, name, token
        self.interval = threads / rate
        self.failures = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        client = self.plat.client(self.name)
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                client.infer(
                    "simple", add_sub_inputs(httpclient), headers={"Authorization": self.token}
                )
            except Exception:  # noqa: BLE001 - counted
                self.failures += 1
            next_at += self.interval
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        client.close()


def load_step(
    plat: Platform, repo: Path, repeat: int, step_qps: float, threshold: float
) -> tuple[list[float], list[float], int]:
    want = math.ceil(step_qps / threshold)
    decided_s, capacity_s, failures = [], [], 0
    for i in range(repeat):
        name = f"bench_step_{i}"
        token = plat.create(
            name,
            repo,
            {
                "min": 1,
                "max": want,
                "scaleStrategies": [{"metricName": "qps", "threshold": threshold}],
                "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0}},
            },
        )
        load = OpenLoad(plat, name, token, step_qps)
        started = time.perf_counter()
        for thread in load.threads:
            thread.start()
        decided = _poll(lambda n=name: plat.desc(n)["replicas"] >= want, every=0.1)
        ready = _poll(lambda n=name: plat.ready_instances(n) >= want, every=0.1)
        load.stop.set()
        for thread in load.threads:
            thread.join(60)
        decided_s.append(decided - started)
        capacity_s.append(ready - started)
        failures += load.failures
        plat.eascmd("delete", "-y", name)
        print(
            f"run {i}: step to {step_qps:g} qps: decision after {decided_s[-1]:.2f}s, "
            f"{want} instances ready after {capacity_s[-1]:.2f}s, {load.failures} failed"
        )
    return decided_s, capacity_s, failures


def _row(label: str, values: list[float]) -> str:
    return f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--step-qps", type=float, default=60.0)
    parser.add_argument("--threshold", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="openeas-elastic-"))
    plat = Platform(home)
    repo = home / "repo"
    write_add_sub_model(repo / "simple" / "1")
    write_model_config(repo / "simple", ADD_SUB_CONFIG)
    up = plat.run(
        PY, "-m", "openeas.cli.main", "up", "--detach", "--cpus=16",
        f"--api-port={free_port()}", f"--http-port={plat.http_port}",
        f"--grpc-port={free_port()}",
    )  # fmt: skip
    if up.returncode != 0:
        sys.exit(f"openeas up failed:\n{up.stdout}{up.stderr}")
    try:
        zero_s, bare_s = cold_start(plat, repo, args.repeat)
        decided_s, capacity_s, failures = load_step(
            plat, repo, args.repeat, args.step_qps, args.threshold
        )
    finally:
        plat.run(PY, "-m", "openeas.cli.main", "down")

    today = datetime.date.today().isoformat()
    want = math.ceil(args.step_qps / args.threshold)
    med_zero, med_bare = statistics.median(zero_s), statistics.median(bare_s)
    lines = [
        f"# Elasticity ({today})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; add/sub ONNX model; "
        f"{args.repeat} runs each.",
        "",
        "| measurement | median s | min s | max s |",
        "|---|---|---|---|",
        _row("first request at zero instances (held by the gateway)", zero_s),
        _row("bare `openeas-server` start -> ready -> one request (peer)", bare_s),
        _row(f"load step 1 -> {want} instances: autoscaler decision", decided_s),
        _row(f"load step 1 -> {want} instances: all ready", capacity_s),
        "",
        f"Cold start from zero / bare start: {med_zero / med_bare:.2f}. "
        f"Step to capacity / bare start: {statistics.median(capacity_s) / med_bare:.2f}. "
        f"Failed requests during the steps: {failures}.",
    ]
    write_results(args.out, f"elastic-{today}", "\n".join(lines))


if __name__ == "__main__":
    main()
