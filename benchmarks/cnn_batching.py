"""Scenario 2: dynamic batching on a compute-bound CNN vs the in-process ONNX Runtime limit.

The harness exports a ResNet-18 (random weights; ONNX built with ``onnx.helper``, so no
framework is needed), then measures

* the in-process limit: one ONNX Runtime session with the server's thread settings, called
  in a loop at batch sizes 1..max; the best images/s is the limit;
* OpenEAS: ``openeas-server`` serving the same file with ``dynamic_batching`` and one
  instance, loaded by perf_analyzer (batch 1 requests, HTTP, binary tensors) at each
  concurrency.

The ratio OpenEAS / limit at concurrency 16 is the issue's target (>= 0.95x).  Usage::

    .venv/bin/python benchmarks/cnn_batching.py --repeat 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from charts import grouped_bars
from onnx import TensorProto, helper, numpy_helper
from results import args_record, write_results

from openeas.testing.onnx_models import IR_VERSION
from openeas.testing.perf import run_perf_analyzer, unavailable_reason
from openeas.testing.server import start_server

HERE = Path(__file__).resolve().parent
MODEL = "resnet18_onnx"


class _GraphBuilder:
    """Accumulates nodes and random initializers of a plain (BN-folded) ResNet."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def _weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        name = self._name("w")
        value = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int, relu: bool) -> str:
        w = self._weight((c_out, c_in, k, k), c_in * k * k)
        b = self._name("b")
        self.initializers.append(numpy_helper.from_array(np.zeros(c_out, np.float32), b))
        y = self._name("conv")
        pad = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, w, b],
                [y],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
            )  # fmt: skip
        )
        return self.relu(y) if relu else y

    def relu(self, x: str) -> str:
        y = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [y]))
        return y

    def basic_block(self, x: str, c_in: int, c_out: int, stride: int) -> str:
        h = self.conv(x, c_in, c_out, 3, stride, relu=True)
        h = self.conv(h, c_out, c_out, 3, 1, relu=False)
        shortcut = (
            x if stride == 1 and c_in == c_out else self.conv(x, c_in, c_out, 1, stride, False)
        )
        y = self._name("add")
        self.nodes.append(helper.make_node("Add", [h, shortcut], [y]))
        return self.relu(y)


def build_resnet18(image_size: int, classes: int = 1000) -> onnx.ModelProto:
    """ResNet-18 topology (batch norm folded into the convolutions), random weights."""
    g = _GraphBuilder()
    x = g.conv("INPUT__0", 3, 64, 7, 2, relu=True)
    pooled = g._name("pool")
    g.nodes.append(
        helper.make_node("MaxPool", [x], [pooled], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1])
    )  # fmt: skip
    x, channels = pooled, 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = g.basic_block(x, channels, width, stride)
            channels = width
    gap, flat = g._name("gap"), g._name("flat")
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], [gap]))
    g.nodes.append(helper.make_node("Flatten", [gap], [flat], axis=1))
    fc_w = g._weight((channels, classes), channels)
    logits = g._name("logits")
    g.nodes.append(helper.make_node("MatMul", [flat, fc_w], [logits]))
    g.nodes.append(helper.make_node("Softmax", [logits], ["OUTPUT__0"], axis=1))
    graph = helper.make_graph(
        g.nodes, "resnet18",
        [helper.make_tensor_value_info("INPUT__0", TensorProto.FLOAT,
                                       ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info("OUTPUT__0", TensorProto.FLOAT, ["batch", classes])],
        initializer=g.initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_repository(
    root: Path, image_size: int, max_batch: int, delay_us: int, params: dict[str, str]
) -> Path:
    model_dir = root / MODEL
    (model_dir / "1").mkdir(parents=True)
    onnx.save(build_resnet18(image_size), model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(
        f'name: "{MODEL}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch}\n'
        f'input [{{ name: "INPUT__0" data_type: TYPE_FP32 dims: [3, {image_size}, {image_size}] }}]\n'
        'output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [1000] }]\n'
        "instance_group [{ kind: KIND_CPU count: 1 }]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n"
        + "".join(
            f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
            for k, v in params.items()
        )
    )
    return model_dir / "1" / "model.onnx"


def in_process_limit(
    model_path: Path, image_size: int, batch_sizes: list[int], seconds: float
) -> dict[int, float]:
    """Images/s of a bare ONNX Runtime loop per batch size (ORT's default threads, as served)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    rates: dict[int, float] = {}
    for batch in batch_sizes:
        x = np.random.default_rng(batch).random((batch, 3, image_size, image_size), np.float32)
        session.run(None, {"INPUT__0": x})  # warm up this shape
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {"INPUT__0": x})
            done += batch
        rates[batch] = done / (time.perf_counter() - start)
        print(f"    in-process batch {batch:<3} {rates[batch]:8.1f} images/s", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument(
        "--delay-us", type=int, default=2000, help="dynamic_batching max_queue_delay_microseconds"
    )
    parser.add_argument(
        "--server-param",
        action="append",
        default=["session.intra_op.allow_spinning=0"],
        metavar="KEY=VALUE",
        help="config parameter of the served model (default: ORT threads do not spin, "
        "leaving the CPU to the event loop between batches)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--measurement-ms", type=int, default=5000)
    parser.add_argument("--loop-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    reason = unavailable_reason()
    if reason:
        sys.exit(f"perf_analyzer: {reason}")
    root = Path(tempfile.mkdtemp(prefix="bench-cnn-"))
    params = dict(item.split("=", 1) for item in args.server_param)
    model_path = write_repository(root, args.image_size, args.max_batch, args.delay_us, params)
    batch_sizes = sorted({1, 2, 4, 8, args.max_batch})

    limits: list[dict[int, float]] = []
    served: dict[int, list[dict[str, float]]] = {c: [] for c in args.concurrency}
    for rep in range(args.repeat):
        print(f"[{rep + 1}/{args.repeat}] in-process ONNX Runtime", flush=True)
        limits.append(in_process_limit(model_path, args.image_size, batch_sizes, args.loop_seconds))
        print(f"[{rep + 1}/{args.repeat}] openeas-server (dynamic batching)", flush=True)
        server = start_server(root, log_path=root / "server.log", timeout=300)
        try:
            for concurrency in args.concurrency:
                point, _ = run_perf_analyzer(
                    MODEL, server.http_url, concurrency=concurrency,
                    measurement_ms=args.measurement_ms,
                )  # fmt: skip
                served[concurrency].append(
                    {"throughput": point.throughput, "p50_us": point.p50_us, "p99_us": point.p99_us}
                )
                print(f"    c={concurrency:<3} {point.throughput:8.1f} infer/s  p50 "
                      f"{point.p50_us} us  p99 {point.p99_us} us", flush=True)  # fmt: skip
        finally:
            server.stop()

    best_limit = [max(run.values()) for run in limits]
    limit = statistics.median(best_limit)
    lines = [
        f"# Scenario 2: ResNet-18 (ONNX, random weights, {args.image_size}x{args.image_size}) "
        f"with dynamic batching — {datetime.date.today()}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores ({platform.platform()}); "
        f"{args.repeat} runs, median [min-max].  Server: 1 instance, max_batch_size "
        f"{args.max_batch}, max_queue_delay {args.delay_us} us, ORT default threads; "
        f"server parameters {params or 'none'}.",
        "",
        "| in-process batch | images/s |",
        "|---|---|",
    ]
    for batch in batch_sizes:
        values = [run[batch] for run in limits]
        lines.append(f"| {batch} | {_spread(values)} |")
    lines += ["", f"In-process limit (best batch, median of runs): **{limit:.1f} images/s**", "",
              "| concurrency | OpenEAS infer/s | p50 us | p99 us | ratio to limit |",
              "|---|---|---|---|---|"]  # fmt: skip
    for concurrency, points in served.items():
        rates = [p["throughput"] for p in points]
        lines.append(
            f"| {concurrency} | {_spread(rates)} | {statistics.median(p['p50_us'] for p in points):.0f} "
            f"| {statistics.median(p['p99_us'] for p in points):.0f} "
            f"| **{statistics.median(rates) / limit:.2f}x** |"
        )
    data = {"limits": limits, "served": served, "args": args_record(args)}
    md = write_results(args.out, f"cnn-batching-{datetime.date.today()}", "\n".join(lines), data)
    stem = md.with_suffix("")
    groups = [f"batch {b}" for b in batch_sizes] + [f"c={c}" for c in served]
    bars = {
        "in-process ORT": [[run[b] for run in limits] for b in batch_sizes] + [[] for _ in served],
        "OpenEAS (dynamic batching)": [[] for _ in batch_sizes]
        + [[p["throughput"] for p in points] for points in served.values()],
    }
    title = (
        f"ResNet-18 ONNX {args.image_size}px: in-process loop vs served ({os.cpu_count()} cores)"
    )
    if grouped_bars(stem.with_suffix(".png"), title, groups, bars, "images/s"):
        print(f"wrote {stem}.png")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


if __name__ == "__main__":
    main()
