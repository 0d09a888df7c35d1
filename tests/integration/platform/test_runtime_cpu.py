"""``Runtime.cpu_seconds`` of the local runtime: a real instance (``openeas-server``
started by :class:`LocalRuntime`); its CPU time grows while it works and counts its
helper processes (here a Python model's child process that computes)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient

from openeas.platform.runtimes.base import Address, Launch
from openeas.platform.runtimes.local import LocalRuntime
from openeas.protocol import instance_token
from tests.integration.conftest import copy_test_model

pytestmark = pytest.mark.python_backend

TOKEN = "inner-token"


def _work(address: Address, seconds: float) -> int:
    """Inferences on the instance for ``seconds``; how many."""
    client = httpclient.InferenceServerClient(f"{address.host}:{address.http_port}")
    headers = {instance_token.HEADER.decode(): TOKEN}
    inp = httpclient.InferInput("INPUT0", [1, 1024], "FP32")
    inp.set_data_from_numpy(np.ones((1, 1024), dtype=np.float32))
    count, end = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            client.infer("identity_fp32", [inp], headers=headers)
            count += 1
    finally:
        client.close()
    return count


#: A model whose instance runs a helper process that computes for a second, then idles.
_HELPER_MODEL = """
import subprocess, sys

BURN = "import time\\nend = time.process_time() + 1.0\\nwhile time.process_time() < end: pass\\ntime.sleep(3600)"


class TritonPythonModel:
    def initialize(self, args):
        self.helper = subprocess.Popen([sys.executable, "-c", BURN])

    def execute(self, requests):
        return []

    def finalize(self):
        self.helper.kill()
        self.helper.wait()
"""


def _write_helper_model(repo: Path) -> None:
    (repo / "helper" / "1").mkdir(parents=True)
    (repo / "helper" / "1" / "model.py").write_text(_HELPER_MODEL)
    (repo / "helper" / "config.pbtxt").write_text(
        'name: "helper"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )


def _own_and_helper_seconds(pid: int) -> tuple[float, float]:
    """The instance process's own CPU seconds, and its (live) children's."""
    main = psutil.Process(pid)
    children = main.children(recursive=True)
    return sum(main.cpu_times()[:4]), sum(sum(c.cpu_times()[:2]) for c in children)


def test_cpu_seconds_grow_while_an_instance_works_and_count_its_stub(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    copy_test_model(repo, "identity_fp32")
    _write_helper_model(repo)
    runtime = LocalRuntime(tmp_path / "logs")
    launch = Launch("cpu-0", "cpu", [f"--model-repository={repo}"], internal_token=TOKEN)

    async def scenario() -> None:
        address = await runtime.start(launch)
        try:
            deadline = time.monotonic() + 120
            while not await runtime.probe(launch.instance_id):
                assert runtime.poll(launch.instance_id) is None, runtime.read_log("cpu", "cpu-0")
                assert time.monotonic() < deadline, "instance not ready"
                await asyncio.sleep(0.1)
            before = await runtime.cpu_seconds(launch.instance_id)
            assert before is not None and before > 0  # starting the server took CPU
            served = await asyncio.to_thread(_work, address, 2.0)
            after = await runtime.cpu_seconds(launch.instance_id)
            assert after is not None
            assert served > 20 and after - before > 0.2, (served, before, after)
            # the helper process's second of computing is the instance's too
            assert address.pid is not None
            pid = address.pid
            deadline = time.monotonic() + 30
            while (helper := _own_and_helper_seconds(pid)[1]) < 0.9:
                assert time.monotonic() < deadline, helper
                await asyncio.sleep(0.1)
            own, helper = _own_and_helper_seconds(pid)
            total = await runtime.cpu_seconds(launch.instance_id)
            assert total is not None and total >= own + helper, (total, own, helper)
            assert await runtime.cpu_seconds("no-such-instance") is None
        finally:
            await runtime.stop(launch.instance_id, 10)
        assert await runtime.cpu_seconds(launch.instance_id) is None  # ended
        runtime.forget(launch.instance_id)
        await runtime.close()

    asyncio.run(scenario())
