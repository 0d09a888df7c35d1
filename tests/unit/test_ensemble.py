"""The ensemble graph checks and executor, with a fake data plane."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from openeas.protocol.errors import InvalidArgument, NotFound
from openeas.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor
from openeas.server.ensemble import EnsembleExecutor, build_plan
from openeas.server.repository.config import parse_config_text
from openeas.server.stats import ModelStats

# Two independent steps ("left", "right") feed a third ("join").
CONFIG = """
name: "ens"
platform: "ensemble"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [
  { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "L" data_type: TYPE_FP32 dims: [ 2 ] }
]
ensemble_scheduling { step [
  { model_name: "join" model_version: -1
    input_map [ { key: "A" value: "L" }, { key: "B" value: "R" } ]
    output_map { key: "Y" value: "OUT" } },
  { model_name: "left" model_version: -1
    input_map { key: "X" value: "IN" } output_map { key: "Y" value: "L" } },
  { model_name: "right" model_version: 2
    input_map { key: "X" value: "IN" } output_map { key: "Y" value: "R" } }
] }
"""


def _executor(calls: list[tuple[str, str]], fail: str = "") -> EnsembleExecutor:
    running: set[str] = set()
    overlap: list[set[str]] = []

    async def infer(request: InferRequest) -> InferResponse:
        calls.append((request.model_name, request.model_version))
        running.add(request.model_name)
        await asyncio.sleep(0.01)
        overlap.append(set(running))
        running.discard(request.model_name)
        if request.model_name == fail:
            raise NotFound(f"Request for unknown model: '{fail}' is not found")
        assert request.outputs == [RequestedOutput("Y")]
        data = sum(t.data for t in request.inputs) + 1
        return InferResponse(request.model_name, "1", outputs=[Tensor("Y", "FP32", [2], data)])

    executor = EnsembleExecutor(build_plan(parse_config_text(CONFIG)), infer, ModelStats())
    executor.overlap = overlap  # type: ignore[attr-defined]
    return executor


def _request(outputs: list[str] | None = None) -> InferRequest:
    data = np.array([1.0, 2.0], dtype=np.float32)
    return InferRequest(
        "ens",
        inputs=[Tensor("IN", "FP32", [2], data)],
        outputs=[RequestedOutput(o) for o in outputs] if outputs is not None else None,
    )


def test_steps_run_in_dataflow_order_and_independent_steps_concurrently():
    calls: list[tuple[str, str]] = []
    executor = _executor(calls)
    response = asyncio.run(executor.infer(_request(), 1))
    assert [t.name for t in response.outputs] == ["OUT", "L"]
    np.testing.assert_array_equal(response.output("L").data, [2.0, 3.0])
    np.testing.assert_array_equal(response.output("OUT").data, [5.0, 7.0])
    assert calls[-1] == ("join", "")
    assert set(calls[:2]) == {("left", ""), ("right", "2")}
    assert {"left", "right"} in executor.overlap  # type: ignore[attr-defined]
    assert executor.pending == 0


def test_only_the_steps_for_the_requested_outputs_run():
    calls: list[tuple[str, str]] = []
    response = asyncio.run(_executor(calls).infer(_request(["L"]), 1))
    assert [t.name for t in response.outputs] == ["L"]
    assert calls == [("left", "")]


def test_a_failing_step_names_its_model_and_keeps_the_status():
    with pytest.raises(NotFound, match=r"in ensemble 'ens', step 2 \(model 'right'\) failed"):
        asyncio.run(_executor([], fail="right").infer(_request(), 1))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('value: "R" }', 'value: "NOPE" }', "consumes tensor 'NOPE'"),
        ('{ key: "Y" value: "OUT" }', '{ key: "Y" value: "X2" }', "output 'OUT' is not produced"),
        ('{ key: "X" value: "IN" } output_map { key: "Y" value: "L" }',
         '{ key: "X" value: "OUT" } output_map { key: "Y" value: "L" }', "form a cycle"),
        ('{ key: "Y" value: "R" }', '{ key: "Y" value: "L" }', "'L' is produced by both"),
        ('model_name: "left"', 'model_name: "ens"', "refers to the ensemble itself"),
    ],
)
def test_bad_graphs(old, new, message):
    assert old in CONFIG
    with pytest.raises(InvalidArgument, match=message):
        build_plan(parse_config_text(CONFIG.replace(old, new, 1)))
