"""inception_graphdef served by OpenEAS vs a plain in-process TensorFlow session loop.

The model comes from ``openeas models fetch inception_graphdef`` (random weights: speed
does not depend on them).  First the in-process limit: the frozen graph in one
``tf.compat.v1.Session`` with the server's session settings (TensorFlow's default thread
pools), ``session.run`` in a loop at batch 1 and at batch 8.  Then ``openeas-server``
serves the same model (its config has ``dynamic_batching {}``) and perf_analyzer
(HTTP, batch 1, binary tensors) measures concurrency 1 and 8.  Concurrency 1 is compared
with the batch-1 loop, concurrency 8 with the batch-8 loop (the work dynamic batching
can form).  Nothing else should run meanwhile; the ratio is what to read.  Usage::

    .venv/bin/python benchmarks/inception.py [--seconds 20] [--requests-per-window 40]
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

import numpy as np
from charts import grouped_bars
from results import write_results

from openeas.testing.perf import run_perf_analyzer, unavailable_reason
from openeas.testing.server import start_server
from openeas.zoo import fetch
from openeas.zoo.inception import INPUT, NAME, OUTPUT

HERE = Path(__file__).resolve().parent


def in_process_loop(graph_path: Path, batch: int, seconds: float) -> dict[str, float]:
    """``session.run`` in a loop for ``seconds``: images/s and per-run latency (us)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    proto = tf.compat.v1.ConfigProto()  # the server's defaults: TF picks the thread pools
    proto.allow_soft_placement = True
    with tf.compat.v1.Session(graph=graph, config=proto) as session:
        run = session.make_callable(
            [graph.get_tensor_by_name(f"{OUTPUT}:0")], [graph.get_tensor_by_name(f"{INPUT}:0")]
        )
        images = np.random.default_rng(0).uniform(-1, 1, (batch, 299, 299, 3))
        images = images.astype(np.float32)
        for _ in range(3):  # warm up
            run(images)
        latencies: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            run(images)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "throughput": len(latencies) * batch / elapsed,
        "p50": latencies[len(latencies) // 2] * 1e6,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6,
    }


Runs = dict[int, list[dict[str, float]]]


def measure_server(repository: Path, log_path: Path, args: argparse.Namespace, into: Runs) -> None:
    """Start openeas-server on ``repository`` and run perf_analyzer at each concurrency."""
    server = start_server(repository, "--log-info=false", log_path=log_path, timeout=300)
    try:
        for concurrency in args.concurrency:
            print(f"  openeas-server, perf_analyzer c={concurrency} ...", flush=True)
            point, _ = run_perf_analyzer(
                NAME,
                server.http_url,
                concurrency=concurrency,
                stability=args.stability,
                extra=[
                    "--measurement-mode",
                    "count_windows",
                    "--measurement-request-count",
                    str(max(args.requests_per_window, 4 * concurrency)),
                ],
                timeout=900,
            )
            into.setdefault(concurrency, []).append(
                {"throughput": point.throughput, "p50": point.p50_us, "p99": point.p99_us}
            )
            print(f"      {point.throughput:.1f} infer/s", flush=True)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="per in-process loop")
    parser.add_argument(
        "--requests-per-window",
        type=int,
        default=40,
        help="perf_analyzer count_windows: requests per measurement window",
    )
    parser.add_argument(
        "--stability", type=int, default=50, help="perf_analyzer --stability-percentage"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds; loop and server alternate each round"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"perf_analyzer: {reason}")

    workdir = Path(tempfile.mkdtemp(prefix="bench-inception-"))
    print("building inception_graphdef ...", flush=True)
    model_dir = fetch(NAME, workdir / "models", progress=lambda m: print(f"  {m}", flush=True))
    graph_path = model_dir / "1" / "model.graphdef"

    loops: Runs = {}
    served: Runs = {}
    load: list[float] = []
    batches = sorted({1, *[c for c in args.concurrency if c > 1]})
    for round_ in range(args.repeat):
        load.append(os.getloadavg()[0])
        print(f"[{round_ + 1}/{args.repeat}] load average {load[-1]:.1f}", flush=True)
        for batch in batches:
            print(f"  in-process session loop, batch {batch} ...", flush=True)
            loops.setdefault(batch, []).append(in_process_loop(graph_path, batch, args.seconds))
            print(f"      {loops[batch][-1]['throughput']:.1f} images/s", flush=True)
        measure_server(workdir / "models", workdir / f"server-{round_}.log", args, served)
    shutil.rmtree(workdir, ignore_errors=True)

    report = render(loops, served, load, args)
    path = write_results(args.out, f"inception-{datetime.date.today().isoformat()}", report)
    groups = [f"batch/c={b}" for b in batches]
    chart = grouped_bars(
        path.with_suffix(".png"),
        f"inception_graphdef: in-process TF loop vs served ({os.cpu_count()} cores)",
        groups,
        {
            "in-process loop": [[r["throughput"] for r in loops.get(b, [])] for b in batches],
            "OpenEAS": [[r["throughput"] for r in served.get(b, [])] for b in batches],
        },
        "images/s",
    )
    if chart:
        print(f"wrote {chart}")


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def render(loops: Runs, served: Runs, load: list[float], args: argparse.Namespace) -> str:
    lines = [
        "# inception_graphdef: OpenEAS (perf_analyzer, HTTP) vs an in-process TF session loop",
        "",
        f"{datetime.date.today().isoformat()}, {platform.node()}, {os.cpu_count()} cores "
        f"(shared: 1-min load average {min(load):.1f}-{max(load):.1f} at the start of each "
        f"round), TensorFlow default thread pools in both, {args.repeat} rounds alternating "
        f"loop and server (median [min-max]), loop {args.seconds:.0f} s per batch size, "
        f"perf_analyzer count_windows of {args.requests_per_window}+ requests "
        f"(stability {args.stability}%), batch 1 per request, dynamic_batching {{ }} in the "
        f"served config.",
        "",
        "| runner | concurrency / batch | images/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for label, table in (("in-process loop", loops), ("openeas-server", served)):
        for key, runs in sorted(table.items()):
            tput = [r["throughput"] for r in runs]
            what = f"batch {key}" if table is loops else f"c={key}"
            lines.append(
                f"| {label} | {what} | {statistics.median(tput):.1f} "
                f"[{min(tput):.1f}-{max(tput):.1f}] | {_median(runs, 'p50') / 1000:.0f} | "
                f"{_median(runs, 'p99') / 1000:.0f} |"
            )
    lines += ["", "| comparison (medians) | throughput ratio |", "|---|---|"]
    for concurrency, runs in sorted(served.items()):
        for batch in sorted({1, concurrency} & set(loops)):
            ratio = _median(runs, "throughput") / _median(loops[batch], "throughput")
            lines.append(f"| openeas c={concurrency} / loop batch {batch} | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
