"""Scenario 3: the gateway's overhead, on the product's path and on a bare ``Gateway``.

**Product path** (the rows ``direct`` and ``gateway``): what users run.  ``openeas up``
(its own temporary ``$OPENEAS_HOME``, free ports, the default flags), a service created
with ``eascmd create`` serving ``examples/models/identity`` (Python backend, FP32 [16],
``--cpu`` cores), then perf_analyzer (sync, batch 1) through the platform's gateway
ports (``/api/predict/<service>`` with the token; gRPC: ``authorization`` and
``x-eas-service`` metadata) against the same instance direct (its TCP ports, with the
per-instance token header ``x-openeas-instance-token`` read from ``platform.db``).
``--workers 2`` measures ``openeas gateway --workers 2`` (following the same control
plane, its own ports) instead of the platform's one gateway process.  ``--group`` puts
the service in a service group and adds the row ``group``: the same requests through
the group's endpoint (``/api/predict/<group>``, the group's token), against ``gateway``.

**Bare** (the rows ``bare-direct`` and ``bare-gateway``, off with ``--no-bare``): a
:class:`~openeas.gateway.Gateway` in a thread of this process in front of an
``openeas-server`` it started, over the instance's Unix socket (``--upstream tcp``: its
TCP port): the gateway's code without the platform around it.

HTTP and gRPC (``--protocol``), at each ``--concurrency`` (default 1 and 16), paths
alternating, each point ``--repeat`` times; the tables give medians with their spread
and the gateway/direct ratios.  Targets (issue 20): HTTP >= 0.9x direct with p50 added
<= 0.3 ms, gRPC >= 0.85x direct at concurrency 16.

Each run also records CPU time per request (steadier than throughput on a shared
machine): the gateway's processes, the instance, the platform's other processes (control
plane and supervisor) and perf_analyzer, divided by the inferences the instance counted
in that run.  One command runs it all (about 10 minutes)::

    .venv/bin/python benchmarks/gateway.py
    .venv/bin/python benchmarks/gateway.py --workers 2 --no-bare
    .venv/bin/python benchmarks/gateway.py --protocol grpc --concurrency 16 --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from charts import grouped_bars
from results import args_record, write_results

from openeas.gateway import ServiceLimits
from openeas.testing.gateway import GatewayThread, upstream_of
from openeas.testing.perf import run_perf_analyzer, unavailable_reason
from openeas.testing.server import free_port, start_server

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / "examples" / "models" / "identity"
SERVICE = "bench"
BARE_TOKEN = "benchmark-token"
#: The paths each (protocol, concurrency) point measures, in pairs (direct, gateway).
PAIRS = (("direct", "gateway"), ("bare-direct", "bare-gateway"))
#: With ``--group``: the group's endpoint against the service's own.
GROUP_PAIR = ("gateway", "group")
GROUP = "bench_group"
#: Whose CPU time each run records.
CPU = ("gateway", "instance", "platform", "perf_analyzer")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            total += sum(proc.cpu_times()[:2])
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Target:
    """One path perf_analyzer drives, and whose CPU a run counts."""

    url: dict[str, str]  # by protocol
    headers: dict[str, list[str]]  # perf_analyzer -H flags, by protocol
    gateway_cpu: Callable[[], float]
    instance: psutil.Process
    stats_url: str  # the instance's identity statistics
    stats_headers: dict[str, str] = field(default_factory=dict)
    platform: list[psutil.Process] = field(default_factory=list)

    def inferences(self) -> int:
        """The instance's count of successful identity inferences so far."""
        request = urllib.request.Request(self.stats_url, headers=self.stats_headers)
        with urllib.request.urlopen(request) as response:
            doc = json.loads(response.read())
        return sum(s["inference_stats"]["success"]["count"] for s in doc["model_stats"])


# -- the product's path -------------------------------------------------------------


class ProductPath:
    """``openeas up`` in a temporary home, the service created with ``eascmd``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.home = Path(tempfile.mkdtemp(prefix="bench-gateway-home-"))
        self.env = {**os.environ, "OPENEAS_HOME": str(self.home)}
        self.api_port, self.http_port, self.grpc_port = free_port(), free_port(), free_port()
        self.workers: subprocess.Popen[bytes] | None = None

    def _run(self, *argv: str, timeout: float = 180) -> str:
        result = subprocess.run(
            [sys.executable, "-m", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def start(self) -> None:
        self._run(
            "openeas.cli.main", "up", "--detach", f"--api-port={self.api_port}",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
        )  # fmt: skip
        repo = self.home / "models"
        shutil.copytree(MODEL, repo / "identity")
        spec = self.home / "service.json"
        spec.write_text(
            json.dumps(
                {
                    "name": SERVICE,
                    "processor": "triton",
                    "processor_params": [f"--model-repository={repo}", "--allow-grpc=true"],
                    "metadata": {
                        "instance": 1,
                        "cpu": self.args.cpu,
                        "memory": 2000,
                        **({"group": GROUP} if self.args.group else {}),
                    },
                }
            )
        )
        self._run("openeas.cli.eascmd", "create", str(spec))
        if self.args.workers > 1:
            self._start_workers()

    def _start_workers(self) -> None:
        """``openeas gateway --workers N`` on its own ports, following the platform."""
        self.http_port, self.grpc_port = free_port(), free_port()
        with open(self.home / "workers.log", "ab") as log:
            self.workers = subprocess.Popen(
                [
                    sys.executable, "-m", "openeas.cli.main", "gateway",
                    f"--api=http://127.0.0.1:{self.api_port}", "--host=127.0.0.1",
                    f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                    f"--workers={self.args.workers}", "--gateway-id=bench",
                    f"--snapshot={self.home / 'routes-bench.json'}",
                ],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop(self) -> None:
        if self.workers is not None and self.workers.poll() is None:
            self.workers.terminate()
            self.workers.wait(60)
        subprocess.run(
            [sys.executable, "-m", "openeas.cli.main", "down"],
            env=self.env,
            capture_output=True,
            timeout=180,
            check=False,
        )
        shutil.rmtree(self.home, ignore_errors=True)

    def _status(self) -> dict[str, dict[str, int]]:
        return json.loads(self._run("openeas.cli.main", "status", "--json"))

    def gateway_processes(self) -> list[psutil.Process]:
        """The gateway processes: the platform's one, or ``--workers``' all."""
        if self.workers is not None:
            parent = psutil.Process(self.workers.pid)
            return [parent, *parent.children(recursive=True)]
        return [psutil.Process(self._status()["components"]["gateway"]["pid"])]

    def platform_processes(self) -> list[psutil.Process]:
        """The control plane and the supervisor (the platform's work besides the gateway)."""
        status = self._status()
        return [
            psutil.Process(status["pid"]),
            psutil.Process(status["components"]["control-plane"]["pid"]),
        ]

    def instance(self) -> tuple[int, str, int, int, str]:
        """The ready instance's pid, host, HTTP and gRPC ports, and internal token."""
        with sqlite3.connect(self.home / "platform.db") as db:
            row = db.execute(
                "SELECT pid, host, http_port, grpc_port, internal_token FROM instances "
                "WHERE service = ? AND ready = 1",
                (SERVICE,),
            ).fetchone()
        if row is None:
            sys.exit(f"no ready instance of {SERVICE}")
        return row

    def targets(self) -> dict[str, Target]:
        with sqlite3.connect(self.home / "platform.db") as db:
            (token,) = db.execute(
                "SELECT token FROM services WHERE name = ?", (SERVICE,)
            ).fetchone()
        pid, host, http_port, grpc_port, internal = self.instance()
        instance = psutil.Process(pid)
        stats = f"http://{host}:{http_port}/v2/models/identity/stats"
        header = {"x-openeas-instance-token": internal}
        self._wait_routed(SERVICE, token)  # then every gateway process runs
        gateways = self.gateway_processes()
        plat = self.platform_processes()
        direct_h = ["-H", f"x-openeas-instance-token:{internal}"]
        targets = {
            "direct": Target(
                {"http": f"{host}:{http_port}", "grpc": f"{host}:{grpc_port}"},
                {"http": direct_h, "grpc": direct_h},
                lambda: 0.0, instance, stats, header, plat,
            ),
            "gateway": Target(
                {
                    "http": f"127.0.0.1:{self.http_port}/api/predict/{SERVICE}",
                    "grpc": f"127.0.0.1:{self.grpc_port}",
                },
                {
                    "http": ["-H", f"Authorization:{token}"],
                    "grpc": ["-H", f"authorization:{token}", "-H", f"x-eas-service:{SERVICE}"],
                },
                lambda: _cpu(gateways), instance, stats, header, plat,
            ),
        }  # fmt: skip
        if self.args.group:
            with sqlite3.connect(self.home / "platform.db") as db:
                (group_token,) = db.execute(
                    "SELECT token FROM groups WHERE name = ?", (GROUP,)
                ).fetchone()
            self._wait_routed(GROUP, group_token)
            targets["group"] = Target(
                {
                    "http": f"127.0.0.1:{self.http_port}/api/predict/{GROUP}",
                    "grpc": f"127.0.0.1:{self.grpc_port}",
                },
                {
                    "http": ["-H", f"Authorization:{group_token}"],
                    "grpc": ["-H", f"authorization:{group_token}", "-H", f"x-eas-service:{GROUP}"],
                },
                lambda: _cpu(gateways), instance, stats, header, plat,
            )  # fmt: skip
        return targets

    def _wait_routed(self, name: str, token: str, timeout: float = 60) -> None:
        """Until the gateway (following the control plane) serves ``name``."""
        url = f"http://127.0.0.1:{self.http_port}/api/predict/{name}/v2/models/identity/ready"
        deadline = time.monotonic() + timeout
        while True:
            try:
                request = urllib.request.Request(url, headers={"Authorization": token})
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    sys.exit(f"the gateway does not serve {name}: {exc}")
            time.sleep(0.2)


# -- the bare gateway ---------------------------------------------------------------


@contextlib.contextmanager
def bare_path(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, Target]]:
    """An ``openeas-server`` and a :class:`Gateway` in a thread of this process."""
    shutil.copytree(MODEL, workdir / "models" / "identity")
    unix_socket = f"@openeas-bench-{os.getpid()}" if args.upstream == "unix" else None
    flags = [f"--http-unix-socket={unix_socket}"] if unix_socket else []
    server = start_server(workdir / "models", *flags, log_path=workdir / "server.log", timeout=120)
    try:
        with GatewayThread() as gateway:
            limits = ServiceLimits(max_concurrency=args.max_concurrency)
            gateway.publish(
                SERVICE, BARE_TOKEN, [upstream_of(server, "i0", unix_socket)], limits=limits
            )
            instance = psutil.Process(server.process.pid)
            stats = f"http://{server.http_url}/v2/models/identity/stats"
            yield {
                "bare-direct": Target(
                    {"http": server.http_url, "grpc": server.grpc_url},
                    {"http": [], "grpc": []},
                    lambda: 0.0, instance, stats,
                ),
                "bare-gateway": Target(
                    {"http": gateway.http_url(SERVICE), "grpc": gateway.grpc_url},
                    {
                        "http": ["-H", f"Authorization:{BARE_TOKEN}"],
                        "grpc": ["-H", f"authorization:{BARE_TOKEN}", "-H", f"x-eas-service:{SERVICE}"],
                    },
                    time.process_time, instance, stats,
                ),
            }  # fmt: skip
    finally:
        server.stop()


# -- measuring ----------------------------------------------------------------------


def measure(
    args: argparse.Namespace, name: str, target: Target, protocol: str, c: int
) -> dict[str, float]:
    """One perf_analyzer run on ``target``: throughput, latency, CPU per request."""
    count, gw = target.inferences(), target.gateway_cpu()
    inst, plat, perf = _cpu([target.instance]), _cpu(target.platform), _children_cpu()
    for attempt in range(3):  # a busy machine may not give a stable window at once
        try:
            point, _ = run_perf_analyzer(
                "identity",
                target.url[protocol],
                protocol=protocol,
                concurrency=c,
                measurement_ms=args.measurement_ms,
                stability=args.stability,
                extra=target.headers[protocol],
            )
            break
        except RuntimeError as exc:
            if attempt == 2 or "stable measurement" not in str(exc):
                raise
            print(f"{protocol} c={c} {name}: no stable measurement, again", flush=True)
    else:  # pragma: no cover - the loop breaks or raises
        raise AssertionError
    count = max(target.inferences() - count, 1)
    used = {
        "gateway": target.gateway_cpu() - gw,
        "instance": _cpu([target.instance]) - inst,
        "platform": _cpu(target.platform) - plat,
        "perf_analyzer": _children_cpu() - perf,
    }
    run = {"throughput": point.throughput, "p50_us": point.p50_us, "p99_us": point.p99_us}
    run |= {f"{who}_cpu_us": used[who] / count * 1e6 for who in CPU}
    print(
        f"{protocol:4s} c={c:<3d} {name:12s} {point.throughput:9.0f} infer/s  p50 {point.p50_us} us"
        f"  p99 {point.p99_us} us  CPU us/request: "
        + ", ".join(f"{who} {run[f'{who}_cpu_us']:.0f}" for who in CPU),
        flush=True,
    )
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["http", "grpc", "both"], default="both")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated levels")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, choices=[1, 2], default=1,
                        help="2: `openeas gateway --workers 2` instead of the platform's gateway")  # fmt: skip
    parser.add_argument(
        "--cpu", type=int, default=1, help="the service's cpu (cores it is pinned to)"
    )
    parser.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare rows")
    parser.add_argument("--group", action="store_true", help="add the service group's row")
    parser.add_argument("--measurement-ms", type=int, default=3000)
    parser.add_argument("--stability", type=int, default=25, help="perf_analyzer's %%")
    parser.add_argument("--max-concurrency", type=int, default=ServiceLimits.max_concurrency,
                        help="the bare gateway's per-instance limit")  # fmt: skip
    parser.add_argument("--upstream", choices=["unix", "tcp"], default="unix",
                        help="how the bare gateway reaches its instance over HTTP")  # fmt: skip
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"perf_analyzer: {reason}")
    protocols = ["http", "grpc"] if args.protocol == "both" else [args.protocol]
    levels = [int(c) for c in args.concurrency.split(",")]
    pairs = (PAIRS if args.bare else PAIRS[:1]) + ((GROUP_PAIR,) if args.group else ())
    names = list(dict.fromkeys(name for pair in pairs for name in pair))
    runs: dict[str, list[dict[str, float]]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    product = ProductPath(args)
    try:
        product.start()
        targets = product.targets()
        with contextlib.ExitStack() as stack:
            if args.bare:
                targets |= stack.enter_context(bare_path(args, workdir))
            for protocol in protocols:
                for c in levels:
                    for rep in range(args.repeat):
                        for name in names if rep % 2 == 0 else reversed(names):
                            run = measure(args, name, targets[name], protocol, c)
                            runs.setdefault(f"{protocol}/{c}/{name}", []).append(run)
    finally:
        product.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    write_report(args, protocols, levels, pairs, runs)


def _ratios(rows: list[dict[str, float]], base: list[dict[str, float]]) -> dict[str, float]:
    """Throughput ratio and p50 added (ms) of ``rows`` against ``base`` (medians)."""
    tput, p50 = (_median([r[k] for r in rows]) for k in ("throughput", "p50_us"))
    base_tput, base_p50 = (_median([r[k] for r in base]) for k in ("throughput", "p50_us"))
    return {"ratio": tput / base_tput, "p50_added_ms": (p50 - base_p50) / 1000}


def _row(
    protocol: str,
    c: int,
    name: str,
    rows: list[dict[str, float]],
    base: list[dict[str, float]] | None = None,
) -> str:
    """One table row: medians over the runs; with ``base``, the ratios to it."""
    tput = [r["throughput"] for r in rows]
    med = {k: _median([r[k] for r in rows]) for k in rows[0]}
    cells = " | ".join(f"{med[f'{who}_cpu_us']:.0f}" for who in CPU)
    ratios = "- | -"
    if base is not None:
        against = _ratios(rows, base)
        ratios = f"**{against['ratio']:.2f}x** | {against['p50_added_ms']:+.2f}"
    return (
        f"| {protocol} | {c} | {name} | {med['throughput']:.0f} [{min(tput):.0f}-{max(tput):.0f}]"
        f" | {med['p50_us']:.0f} | {med['p99_us']:.0f} | {ratios} | {cells} |"
    )


def write_report(
    args: argparse.Namespace,
    protocols: list[str],
    levels: list[int],
    pairs: tuple[tuple[str, str], ...],
    runs: dict[str, list[dict[str, float]]],
) -> None:
    today = datetime.date.today().isoformat()
    stem = f"gateway-{today}" + (f"-workers{args.workers}" if args.workers > 1 else "")
    stem += "-group" if args.group else ""
    lines = [
        f"# Gateway overhead: the product's path and the bare gateway ({today})",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; perf_analyzer, the instance and the gateway share the "
        "CPUs (other work may be running: compare only the ratios of one run).",
        f"Model `examples/models/identity` (Python backend, FP32 [16]), 1 instance "
        f"(`cpu: {args.cpu}`); perf_analyzer sync, batch 1, {args.measurement_ms} ms windows "
        f"(stability {args.stability}%), {args.repeat} runs per point, paths alternating. "
        f"Product path: `openeas up` + `eascmd create`, "
        + (
            f"`openeas gateway --workers {args.workers}`"
            if args.workers > 1
            else "the platform's gateway"
        )
        + f"; bare: a `Gateway` in the benchmark's process, upstream over {args.upstream} (HTTP).",
        "",
        "| protocol | c | path | infer/s median [min-max] | p50 us | p99 us | ratio | p50 added ms "
        "| CPU us/request: gateway | instance | platform | perf_analyzer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for protocol in protocols:
        for c in levels:
            for direct, through in pairs:
                key = f"{protocol}/{c}/"
                lines.append(_row(protocol, c, direct, runs[key + direct]))
                lines.append(_row(protocol, c, through, runs[key + through], runs[key + direct]))
                summary[key + through] = _ratios(runs[key + through], runs[key + direct])
    lines += [
        "",
        "ratio: gateway / direct throughput (medians), group / gateway with --group; "
        "targets HTTP >= 0.9x with p50 added <= 0.3 ms, gRPC >= 0.85x at c=16. CPU time per request (medians): the gateway's "
        "processes (bare: this benchmark's process), the instance, the platform's control "
        "plane and supervisor, perf_analyzer; each divided by the inferences the instance "
        "counted during the run.",
        "",
    ]
    data = {"args": args_record(args), "summary": summary, "runs": runs}
    write_results(args.out, stem, "\n".join(lines), data)
    names = list(dict.fromkeys(name for pair in pairs for name in pair))
    groups = [f"{p} c={c}" for p in protocols for c in levels]
    chart = grouped_bars(
        args.out / f"{stem}.png",
        f"Identity model: direct vs through the gateway ({os.cpu_count()} cores)",
        groups,
        {
            n: [[r["throughput"] for r in runs[f"{p}/{c}/{n}"]] for p in protocols for c in levels]
            for n in names
        },
        "infer/s",
    )
    if chart:
        print(f"written: {chart}")


if __name__ == "__main__":
    main()
