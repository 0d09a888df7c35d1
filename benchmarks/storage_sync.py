"""Repository sync from a local SeaweedFS: ``RepositoryMount.refresh()`` vs ``aws s3 sync``.

The repository holds 1,000 small files (1-16 KiB) and one 200 MB file.  Both tools read
the same bucket through the same endpoint in the same run; each cold sync starts from an
empty destination, runs alternate, and the medians are compared.  A no-change re-sync
(the poll-mode case) is timed too.  Needs the AWS CLI from ``benchmarks/setup_peers.sh``.
Usage::

    .venv/bin/python benchmarks/storage_sync.py --repeat 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from results import write_results

from openeas.storage import StorageConfig, open_store
from openeas.testing.seaweedfs import SeaweedFS, start_seaweedfs

HERE = Path(__file__).resolve().parent
AWS = HERE / ".peers" / "awscli" / "bin" / "aws"
BUCKET = "bench-repo"
PREFIX = "models"


def make_repository(root: Path, small: int, big_mb: int) -> int:
    """Write the repository locally; its total size in bytes."""
    rng = random.Random(42)
    total = 0
    for i in range(small):
        path = root / f"model_{i // 10:03d}" / str(1 + i % 10) / "weights.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(1024, 16 * 1024))
        path.write_bytes(data)
        total += len(data)
    big = root / "big_model" / "1" / "model.onnx"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:
        for _ in range(big_mb):
            f.write(os.urandom(1 << 20))
    return total + big_mb * (1 << 20)


def upload(root: Path, config: StorageConfig) -> None:
    store = open_store(f"s3://{BUCKET}/{PREFIX}", config)
    files = [p for p in root.rglob("*") if p.is_file()]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: store.upload(p, p.relative_to(root).as_posix()), files))
    store.close()


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run ``command`` twice (cold, then no change): (cold wall s, no-change wall s,
    cold CPU s of the process itself, user + system)."""
    times = []
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True)
        times.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if len(times) == 1:
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return times[0], times[1], cpu


def time_ours(cache: Path, server: SeaweedFS) -> tuple[float, float, float]:
    """(cold sync, no-change re-sync) wall seconds, each a fresh ``python`` process
    (like the aws CLI, so both pay their interpreter start-up)."""
    env = {**os.environ, **server.env()}
    code = "import sys; from openeas.storage import sync_repository; sync_repository(*sys.argv[1:])"
    command = [sys.executable, "-c", code, f"s3://{BUCKET}/{PREFIX}", str(cache)]
    return _timed(command, env)


def time_aws(dest: Path, server: SeaweedFS) -> tuple[float, float, float]:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    command = [
        str(AWS),
        "s3",
        "sync",
        f"s3://{BUCKET}/{PREFIX}",
        str(dest),
        "--endpoint-url",
        server.endpoint,
        "--only-show-errors",
    ]
    return _timed(command, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not AWS.exists():
        sys.exit(f"{AWS} is missing: run benchmarks/setup_peers.sh first")

    work = Path(tempfile.mkdtemp(prefix="openeas-storage-bench-"))
    server = start_seaweedfs(work / "seaweedfs", buckets=(BUCKET,))
    try:
        config = StorageConfig(
            endpoint=server.endpoint, access_key=server.access_key, secret_key=server.secret_key
        )
        size = make_repository(work / "repo", args.small, args.big_mb)
        upload(work / "repo", config)
        shutil.rmtree(work / "repo")
        # Untimed warm-up of each tool: the store's first reads of fresh uploads are slower.
        for name, fn in (("ours", time_ours), ("aws", time_aws)):
            fn(work / f"warmup-{name}", server)
            shutil.rmtree(work / f"warmup-{name}", ignore_errors=True)
        ours, aws = [], []
        for run in range(args.repeat):
            # Alternate who goes first so page-cache and server warm-up effects even out.
            order = [("ours", time_ours), ("aws", time_aws)]
            if run % 2:
                order.reverse()
            for name, fn in order:
                dest = work / f"{name}-{run}"
                result = fn(dest, server)
                (ours if name == "ours" else aws).append(result)
                shutil.rmtree(dest, ignore_errors=True)
                print(
                    f"run {run} {name}: cold {result[0]:.2f}s (CPU {result[2]:.2f}s), "
                    f"no-change {result[1]:.2f}s"
                )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    def med(values: list[tuple[float, float, float]], i: int) -> float:
        return statistics.median(v[i] for v in values)

    def best(values: list[tuple[float, float, float]], i: int) -> float:
        return min(v[i] for v in values)

    def row(label: str, pick: object, i: int) -> str:
        o, a = pick(ours, i), pick(aws, i)  # type: ignore[operator]
        return f"| {label} | {o:.2f} | {a:.2f} | {a / o:.2f}x |"

    aws_version = subprocess.run([str(AWS), "--version"], capture_output=True, text=True)
    load = os.getloadavg()[0]
    lines = [
        f"# Repository sync: OpenEAS vs aws s3 sync ({datetime.date.today()})",
        "",
        f"Repository: {args.small} files of 1-16 KiB + one {args.big_mb} MB file "
        f"({size / 1e6:.0f} MB), local SeaweedFS, same endpoint, same run; "
        f"{args.repeat} alternating runs after one untimed warm-up each, fresh "
        "destination each time.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {load:.1f} at the end (a shared, "
        f"busy machine: wall times are noisy); peer: "
        f"{(aws_version.stdout or aws_version.stderr).strip()}.",
        "",
        "| sync | OpenEAS | aws s3 sync | aws / OpenEAS |",
        "|---|---|---|---|",
        row("cold, wall s (median)", med, 0),
        row("cold, wall s (best)", best, 0),
        row("cold, CPU s of the tool (median)", med, 2),
        row("no change (poll), wall s (median)", med, 1),
        "",
        "A ratio above 1 means OpenEAS is faster.  Both run as a fresh process (interpreter "
        "start-up included).  OpenEAS's cold sync includes building the hard-linked snapshot "
        "and the atomic swap; aws s3 sync writes files in place.  CPU is the tool's own "
        "user + system time (SeaweedFS excluded), the steadier measure on a busy machine.",
    ]
    write_results(args.out, f"storage-sync-{datetime.date.today()}", "\n".join(lines))


if __name__ == "__main__":
    main()
