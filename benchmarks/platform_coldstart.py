"""Cold start of a service: ``eascmd create`` of a small ONNX model until it is running.

Starts a platform (``openeas up --detach``) in a fresh ``$OPENEAS_HOME`` on free ports,
then times ``eascmd create`` (a real subprocess, from invocation to its exit after
``[OK] Service is running``) for the add/sub ONNX model, ``--repeat`` times (each service
deleted before the next).  The peer, measured in the same run and interleaved, is the
floor under it: the bare processor (``openeas-server`` on the same repository) started
until ``/v2/health/ready`` answers.  The model load time from the object store is the same
bare start with ``--model-repository=oss://...`` (the embedded store, an empty cache each
time, so every object is fetched).  Target: create -> running under 5 s.  Usage::

    .venv/bin/python benchmarks/platform_coldstart.py --repeat 5
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

from results import write_results

from openeas.testing.onnx_models import ADD_SUB_CONFIG, write_add_sub_model, write_model_config
from openeas.testing.server import free_port, start_server

HERE = Path(__file__).resolve().parent


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="openeas-coldstart-"))
    os.environ["OPENEAS_HOME"] = str(home)  # for the upload below and every child
    env = dict(os.environ)
    repo = home / "repo"
    write_add_sub_model(repo / "simple" / "1")
    write_model_config(repo / "simple", ADD_SUB_CONFIG)
    py = sys.executable
    from openeas.storage.transfer import copy

    store_uri = "oss://coldstart-repo/models"
    copy(f"{repo}/", store_uri, recursive=True)
    up = _run(
        env, py, "-m", "openeas.cli.main", "up", "--detach", "--cpus=16",
        f"--api-port={free_port()}", f"--http-port={free_port()}", f"--grpc-port={free_port()}",
    )  # fmt: skip
    if up.returncode != 0:
        sys.exit(f"openeas up failed:\n{up.stdout}{up.stderr}")
    create_s: list[float] = []
    bare_s: list[float] = []
    store_s: list[float] = []
    try:
        for i in range(args.repeat):
            name = f"coldstart_{i}"
            spec = home / f"{name}.json"
            spec.write_text(
                json.dumps(
                    {
                        "name": name,
                        "processor": "triton",
                        "processor_params": [f"--model-repository={repo}"],
                        "metadata": {"instance": 1, "cpu": 1, "memory": 2000},
                    }
                )
            )
            started = time.perf_counter()
            result = _run(env, py, "-m", "openeas.cli.eascmd", "create", str(spec))
            elapsed = time.perf_counter() - started
            if result.returncode != 0 or "[OK] Service is running" not in result.stdout:
                sys.exit(f"create failed:\n{result.stdout}{result.stderr}")
            create_s.append(elapsed)
            _run(env, py, "-m", "openeas.cli.eascmd", "delete", "-y", name)

            started = time.perf_counter()
            server = start_server(repo, log_path=home / f"bare-{i}.log")
            bare_s.append(time.perf_counter() - started)
            server.stop()

            shutil.rmtree(home / "cache", ignore_errors=True)
            started = time.perf_counter()
            server = start_server(store_uri, log_path=home / f"store-{i}.log", env=env)
            store_s.append(time.perf_counter() - started)
            server.stop()
            print(
                f"run {i}: eascmd create {create_s[-1]:.2f}s, bare processor {bare_s[-1]:.2f}s, "
                f"bare processor from {store_uri} {store_s[-1]:.2f}s"
            )
    finally:
        _run(env, py, "-m", "openeas.cli.main", "down")

    med_c, med_b = statistics.median(create_s), statistics.median(bare_s)
    today = datetime.date.today().isoformat()
    lines = [
        f"# Service cold start ({today})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; add/sub ONNX model; "
        f"{args.repeat} runs, interleaved.",
        "",
        "| measurement | median s | min s | max s |",
        "|---|---|---|---|",
        f"| `eascmd create` -> `Service is running` | {med_c:.2f} | {min(create_s):.2f} | {max(create_s):.2f} |",
        f"| bare `openeas-server` start -> ready (peer) | {med_b:.2f} | {min(bare_s):.2f} | {max(bare_s):.2f} |",
        f"| the same from `{store_uri}` (embedded store, cold cache) | "
        f"{statistics.median(store_s):.2f} | {min(store_s):.2f} | {max(store_s):.2f} |",
        "",
        f"Ratio create / bare processor: {med_c / med_b:.2f}. Target: create under 5 s "
        f"({'met' if med_c < 5 else 'NOT met'}).",
    ]
    write_results(args.out, f"platform-coldstart-{today}", "\n".join(lines))


if __name__ == "__main__":
    main()
