"""Scenario 1: the identity Python-backend model served by OpenEAS and its peers.

perf_analyzer (sync, batch 1) at each concurrency, every point repeated; the table gives
the median throughput with its spread and the median p50/p99 latencies, plus OpenEAS's
ratio to each peer.  Usage::

    .venv/bin/python benchmarks/processor.py --protocol http --repeat 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from charts import processor_chart
from peers import MLServer, OpenEAS, Peer, Triton
from results import write_results

from openeas.testing.perf import run_perf_analyzer, unavailable_reason

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / "examples" / "models" / "identity"


def in_process_limit(model_dir: Path, seconds: float = 3.0) -> float:
    """Requests/s of the identity model's ``execute`` called in a loop (batch 1, one thread).

    The Python backend exactly as the server runs it, with no server around it: the ceiling
    no front end can pass on one thread.
    """
    import numpy as np

    from openeas.protocol.types import InferRequest, Tensor
    from openeas.server.backends.base import ExecTiming, ModelContext
    from openeas.server.backends.python import PythonBackend
    from openeas.server.repository.config import parse_config_text

    config = parse_config_text((model_dir / "config.pbtxt").read_text())
    context = ModelContext(name=config.name, version=1, config=config, model_dir=model_dir)
    instance = PythonBackend().create_instance(context, f"{config.name}_0_0", 0)
    data = np.ones((1, 16), np.float32)
    done, start = 0, time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            request = InferRequest(
                model_name=config.name, inputs=[Tensor("INPUT0", "FP32", [1, 16], data)]
            )
            instance.execute([request], ExecTiming())
            done += 1
        return done / (time.perf_counter() - start)
    finally:
        instance.finalize()


def make_peers(names: list[str]) -> list[Peer]:
    factories = {
        "openeas": OpenEAS,
        # another checkout's src/ (OPENEAS_BASE_SRC), e.g. `git worktree add /tmp/base REV`
        "openeas-base": lambda: OpenEAS(
            "openeas-base", Path(os.environ.get("OPENEAS_BASE_SRC", ""))
        ),
        "triton": Triton,
        "mlserver": MLServer,
        "mlserver-pw0": lambda: MLServer(parallel_workers=0),
    }
    return [factories[name]() for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peers", default="openeas,triton,mlserver,mlserver-pw0")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--measurement-ms", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    reason = unavailable_reason()
    if reason:
        sys.exit(f"perf_analyzer: {reason}")
    repository = Path(tempfile.mkdtemp(prefix="bench-repo-"))
    shutil.copytree(MODEL, repository / "identity")

    results: dict[str, dict[int, list[dict[str, float]]]] = {}
    failures: dict[str, str] = {}
    for rep in range(args.repeat):
        for peer in make_peers(args.peers.split(",")):
            why = peer.available()
            if why:
                print(f"skip {peer.name}: {why}", flush=True)
                continue
            extra: list[str] = []
            if peer.name.startswith("mlserver") and args.protocol == "http":
                extra = ["--input-tensor-format", "json", "--output-tensor-format", "json"]
            print(f"[{rep + 1}/{args.repeat}] {peer.name} ({args.protocol})", flush=True)
            try:
                peer.start(repository)
                url = peer.http_url if args.protocol == "http" else peer.grpc_url
                for concurrency in args.concurrency:
                    point, _ = run_perf_analyzer(
                        "identity", url, protocol=args.protocol, concurrency=concurrency,
                        measurement_ms=args.measurement_ms, extra=extra,
                    )  # fmt: skip
                    print(
                        f"    c={concurrency:<3} {point.throughput:9.0f} infer/s  "
                        f"p50 {point.p50_us} us  p99 {point.p99_us} us",
                        flush=True,
                    )
                    results.setdefault(peer.name, {}).setdefault(concurrency, []).append(
                        {"throughput": point.throughput, "p50": point.p50_us, "p99": point.p99_us}
                    )
            except (RuntimeError, TimeoutError) as exc:
                first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                print(f"    {peer.name} failed: {first_line}", flush=True)
                failures.setdefault(peer.name, first_line)
            finally:
                peer.stop()
    limit = in_process_limit(repository / "identity")
    shutil.rmtree(repository, ignore_errors=True)
    report = render(results, args)
    report += (
        f"\nIn-process limit (the Python backend's execute() in a loop, batch 1, one "
        f"thread, no server): {limit:.0f} requests/s.\n"
    )
    for name, reason in failures.items():
        report += f"\n{name} could not be measured: {reason}\n"
    stem = f"processor-{args.protocol}-{datetime.date.today().isoformat()}"
    md = write_results(args.out, stem, report, results)
    chart = processor_chart(md.with_suffix(".json"))
    if chart:
        print(f"wrote {chart}")


def render(results: dict[str, dict[int, list[dict[str, float]]]], args: argparse.Namespace) -> str:
    lines = [
        f"# Identity Python-backend model, {args.protocol.upper()}, perf_analyzer 2.51",
        "",
        f"{datetime.date.today().isoformat()}, {platform.node()}, {os.cpu_count()} cores, "
        f"{args.repeat} runs per point (median [min-max]), measurement {args.measurement_ms} ms",
        "",
        "| server | concurrency | infer/s | p50 us | p99 us |",
        "|---|---|---|---|---|",
    ]
    for name, points in results.items():
        for concurrency, runs in sorted(points.items()):
            tput = [r["throughput"] for r in runs]
            lines.append(
                f"| {name} | {concurrency} | {statistics.median(tput):.0f} "
                f"[{min(tput):.0f}-{max(tput):.0f}] | {statistics.median(r['p50'] for r in runs):.0f} "
                f"| {statistics.median(r['p99'] for r in runs):.0f} |"
            )
    ours = results.get("openeas", {})
    if ours:
        lines += [
            "",
            "| ratio (openeas / peer) | concurrency | throughput | p99 |",
            "|---|---|---|---|",
        ]
        for name, points in results.items():
            if name == "openeas":
                continue
            for concurrency, runs in sorted(points.items()):
                if concurrency not in ours:
                    continue
                mine = ours[concurrency]
                t = statistics.median(r["throughput"] for r in mine) / statistics.median(
                    r["throughput"] for r in runs
                )
                p = statistics.median(r["p99"] for r in mine) / statistics.median(
                    r["p99"] for r in runs
                )
                lines.append(f"| vs {name} | {concurrency} | {t:.2f}x | {p:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
