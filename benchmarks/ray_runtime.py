"""The Ray runtime against the local runtime: create -> Running, and gateway throughput.

Two platforms run side by side, each in a fresh ``$OPENEAS_HOME`` on free ports: one with
the local runtime (``openeas up``), one with the Ray runtime (``openeas up --runtime ray``)
on a Ray cluster of this machine (``ray.cluster_utils``: a head that runs no instances and
one worker node of group ``default``, so every Ray instance runs on another node than the
platform and its gateway, reached over TCP at the node's address).

1. **create -> Running**: ``eascmd create`` (a real subprocess, from invocation to its exit
   after ``[OK] Service is running``) of the add/sub ONNX model, alternating between the
   platforms, ``--repeat`` times each (each service deleted before the next); the ratio
   Ray / local of the medians.
2. **throughput through the gateway**: a service of ``examples/models/identity`` (Python
   backend, FP32 [16]) on each platform; perf_analyzer (HTTP, sync, batch 1, concurrency
   ``--concurrency``) against each platform's gateway (``/api/predict/<service>`` with the
   token), alternating, ``--repeat`` times; the ratio Ray / local of the medians.  The
   local instance is reached over its Unix socket (same machine), the Ray one over TCP.

Usage (the lead's real run; ``--repeat 1 --measurement-ms 500`` is a smoke test)::

    .venv/bin/python benchmarks/ray_runtime.py --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from results import args_record, write_results

from openeas.testing.onnx_models import ADD_SUB_CONFIG, write_add_sub_model, write_model_config
from openeas.testing.perf import run_perf_analyzer, unavailable_reason
from openeas.testing.server import free_port

HERE = Path(__file__).resolve().parent
IDENTITY = HERE.parent / "examples" / "models" / "identity"
#: small nodes for a small machine (docs/cluster.md)
NODE = {"num_cpus": 4, "object_store_memory": 80 * 2**20}
RUNTIMES = ("local", "ray")


@dataclass
class Platform:
    runtime: str
    home: Path
    http_port: int

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "OPENEAS_HOME": str(self.home)}

    def run(self, module: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            env=self.env, capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip

    def eascmd(self, *args: str) -> str:
        result = self.run("openeas.cli.eascmd", *args)
        if result.returncode != 0:
            sys.exit(f"[{self.runtime}] eascmd {' '.join(args)}:\n{result.stdout}{result.stderr}")
        return result.stdout

    def spec(self, name: str, repo: Path) -> Path:
        path = self.home / f"{name}.json"
        doc = {
            "name": name,
            "processor": "triton",
            "processor_params": [f"--model-repository={repo}"],
            "metadata": {"instance": 1, "cpu": 1, "memory": 2000, "resource": "default"},
        }
        path.write_text(json.dumps(doc))
        return path


@contextlib.contextmanager
def running_platform(runtime: str, root: Path, extra: list[str]) -> Iterator[Platform]:
    home = root / runtime
    home.mkdir()
    plat = Platform(runtime, home, free_port())
    up = plat.run(
        "openeas.cli.main", "up", "--detach", f"--api-port={free_port()}",
        f"--http-port={plat.http_port}", f"--grpc-port={free_port()}", *extra,
    )  # fmt: skip
    if up.returncode != 0:
        sys.exit(f"openeas up ({runtime}) failed:\n{up.stdout}{up.stderr}")
    try:
        yield plat
    finally:
        plat.run("openeas.cli.main", "down")


@contextlib.contextmanager
def ray_cluster() -> Iterator[str]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **NODE})
    try:
        cluster.add_node(**NODE, resources={"openeas_group_default": 1000})
        yield str(cluster.address)
    finally:
        cluster.shutdown()


def time_creates(plats: dict[str, Platform], repo: Path, repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in plats}
    for rep in range(repeat):
        order = RUNTIMES if rep % 2 == 0 else RUNTIMES[::-1]
        for runtime in order:
            plat, name = plats[runtime], f"create_{rep}"
            started = time.perf_counter()
            out = plat.eascmd("create", str(plat.spec(name, repo)))
            elapsed = time.perf_counter() - started
            if "[OK] Service is running" not in out:
                sys.exit(f"[{runtime}] create did not reach Running:\n{out}")
            times[runtime].append(elapsed)
            plat.eascmd("delete", "-y", name)
            print(f"[{rep}] create -> Running, {runtime:5s}: {elapsed:.2f}s", flush=True)
    return times


def measure_throughput(
    plats: dict[str, Platform], repo: Path, args: argparse.Namespace
) -> dict[str, list[dict[str, float]]]:
    tokens = {}
    for runtime, plat in plats.items():
        plat.eascmd("create", str(plat.spec("bench", repo)))
        tokens[runtime] = json.loads(plat.eascmd("desc", "bench", "--json"))["token"]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in plats}
    for rep in range(args.repeat):
        order = RUNTIMES if rep % 2 == 0 else RUNTIMES[::-1]
        for runtime in order:
            point, _ = run_perf_analyzer(
                "identity",
                f"127.0.0.1:{plats[runtime].http_port}/api/predict/bench",
                concurrency=args.concurrency,
                measurement_ms=args.measurement_ms,
                stability=args.stability,
                extra=["-H", f"Authorization:{tokens[runtime]}"],
            )
            runs[runtime].append(
                {"throughput": point.throughput, "p50_us": point.p50_us, "p99_us": point.p99_us}
            )
            print(
                f"[{rep}] gateway -> {runtime:5s} instance: {point.throughput:8.0f} infer/s  "
                f"p50 {point.p50_us} us  p99 {point.p99_us} us",
                flush=True,
            )
    return runs


def _spread(values: list[float], fmt: str = ".2f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def write_report(
    args: argparse.Namespace,
    creates: dict[str, list[float]],
    runs: dict[str, list[dict[str, float]]],
) -> None:
    today = datetime.date.today().isoformat()
    tput = {r: [run["throughput"] for run in runs[r]] for r in RUNTIMES}
    create_ratio = statistics.median(creates["ray"]) / statistics.median(creates["local"])
    tput_ratio = statistics.median(tput["ray"]) / statistics.median(tput["local"])
    lines = [
        f"# The Ray runtime against the local runtime ({today})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; a Ray head and one worker node on this machine; both "
        "platforms up side by side (compare only the ratios of one run).",
        "",
        "| measurement | local runtime | Ray runtime | Ray / local |",
        "|---|---|---|---|",
        f"| `eascmd create` -> Running, s (add/sub ONNX), median [min-max] | "
        f"{_spread(creates['local'])} | {_spread(creates['ray'])} | **{create_ratio:.2f}x** |",
        f"| gateway -> instance, infer/s (identity, HTTP c={args.concurrency}) | "
        f"{_spread(tput['local'], '.0f')} | {_spread(tput['ray'], '.0f')} | "
        f"**{tput_ratio:.2f}x** |",
        f"| p50 us | {statistics.median(r['p50_us'] for r in runs['local']):.0f} | "
        f"{statistics.median(r['p50_us'] for r in runs['ray']):.0f} | |",
        "",
        f"{args.repeat} runs of each, alternating; perf_analyzer {args.measurement_ms} ms "
        f"windows (stability {args.stability}%). The local instance is reached over its "
        "Unix socket, the Ray one (on the worker node) over TCP.",
        "",
    ]
    data = {"args": args_record(args), "create_s": creates, "runs": runs}
    write_results(args.out, f"ray-runtime-{today}", "\n".join(lines), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--measurement-ms", type=int, default=3000)
    parser.add_argument("--stability", type=int, default=25, help="perf_analyzer's %%")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"perf_analyzer: {reason}")
    root = Path(tempfile.mkdtemp(prefix="bench-ray-runtime-"))
    small, identity = root / "add_sub", root / "identity"
    write_add_sub_model(small / "simple" / "1")
    write_model_config(small / "simple", ADD_SUB_CONFIG)
    shutil.copytree(IDENTITY, identity / "identity")
    try:
        with (
            ray_cluster() as address,
            running_platform("local", root, ["--cpus=16"]) as local,
            running_platform("ray", root, ["--runtime=ray", f"--ray-address={address}",
                                           f"--storage-port={free_port()}"]) as ray,
        ):  # fmt: skip
            plats = {"local": local, "ray": ray}
            creates = time_creates(plats, small, args.repeat)
            runs = measure_throughput(plats, identity, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_report(args, creates, runs)


if __name__ == "__main__":
    main()
