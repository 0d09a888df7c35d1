"""``sequence_batching`` validation and the tensors the sequence batcher adds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from openeas.protocol.errors import InternalError, InvalidArgument, Unsupported
from openeas.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor
from openeas.server.repository.config import parse_config_text
from openeas.server.repository.normalize import complete_config
from openeas.server.sequence.config import DEFAULT_IDLE_US, sequence_settings
from openeas.server.sequence.tensors import (
    backend_request,
    check_corrid,
    control_tensors,
    null_request,
    sequence_id_of,
    split_state,
)

BASE = """
name: "m"
backend: "python"
max_batch_size: 4
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""

CONTROLS = """
  control_input [
    { name: "S" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "E" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0.5, 2.5 ] } ] },
    { name: "R" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] },
    { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_INT64 } ] }
  ]
"""


def settings(body: str, model_dir: Path | None = None, base: str = BASE):
    return sequence_settings(parse_config_text(base + f"sequence_batching {{ {body} }}"), model_dir)


def test_defaults_are_tritons() -> None:
    s = settings("")
    assert s.strategy == "direct"
    assert s.slots_per_instance == 4
    assert s.idle_ns == DEFAULT_IDLE_US * 1000
    assert s.controls == () and s.states == ()


def test_oldest_and_direct_settings() -> None:
    s = settings(
        "oldest { max_candidate_sequences: 3 preferred_batch_size: [ 2, 4 ] "
        "max_queue_delay_microseconds: 100 preserve_ordering: true } "
        "max_sequence_idle_microseconds: 5"
    )
    assert (s.strategy, s.slots_per_instance, s.preferred, s.delay_ns) == (
        "oldest",
        3,
        frozenset({2, 4}),
        100_000,
    )
    assert s.preserve_ordering and s.idle_ns == 5000
    s = settings("direct { max_queue_delay_microseconds: 7 minimum_slot_utilization: 0.5 }")
    assert (s.strategy, s.delay_ns, s.min_slot_utilization) == ("direct", 7000, 0.5)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("oldest { }", "max_candidate_sequences must be > 0"),
        (
            "oldest { max_candidate_sequences: 2 preferred_batch_size: [ 8 ] }",
            "preferred_batch_size 8 must be in range [1, 4]",
        ),
        ("direct { minimum_slot_utilization: 1.5 }", "minimum_slot_utilization must be in"),
        (
            'control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID } ] } ]',
            "must set 'data_type' to one of",
        ),
        (
            'control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ]',
            "must set exactly one of int32_false_true",
        ),
        (
            'control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START '
            "int32_false_true: [ 1 ] } ] } ]",
            "must give 2 values",
        ),
        (
            'control_input [ { name: "IN" control [ { kind: CONTROL_SEQUENCE_READY '
            "int32_false_true: [ 0, 1 ] } ] } ]",
            "'IN' is also a model input",
        ),
        (
            'control_input [ { name: "A" control [ { kind: CONTROL_SEQUENCE_READY '
            'int32_false_true: [ 0, 1 ] } ] }, { name: "B" control [ { kind: '
            "CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] } ]",
            "'CONTROL_SEQUENCE_READY' is given more than once",
        ),
        (
            'state [ { input_name: "A" output_name: "B" dims: [ 1 ] } ]',
            "state 'A' must specify 'data_type'",
        ),
        (
            'state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 } ]',
            "must specify 'dims'",
        ),
        (
            'state [ { input_name: "A" output_name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "'OUT' is also a model input or output",
        ),
        (
            'state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [ -1 ] } ]',
            "has variable dims",
        ),
        (
            'state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [ 2 ] '
            "initial_state { data_type: TYPE_INT32 dims: [ 2 ] zero_data: true } } ]",
            "has data_type TYPE_INT32, the state has TYPE_FP32",
        ),
        (
            'state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [ 2 ] '
            "initial_state { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } ]",
            "do not match the state dims",
        ),
    ],
)
def test_bad_sections_name_the_field(body: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match="sequence_batching") as info:
        settings(body)
    assert message in str(info.value)


def test_initial_state_from_file(tmp_path: Path) -> None:
    body = (
        'state [ { input_name: "A" output_name: "B" data_type: TYPE_INT32 dims: [ -1 ] '
        'initial_state { data_type: TYPE_INT32 dims: [ 3 ] data_file: "init" } } ]'
    )
    with pytest.raises(InvalidArgument, match="cannot read"):
        settings(body, tmp_path)
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "init").write_bytes(np.arange(2, dtype=np.int32).tobytes())
    with pytest.raises(InvalidArgument, match="holds 2 elements"):
        settings(body, tmp_path)
    (tmp_path / "initial_state" / "init").write_bytes(np.array([4, 5, 6], np.int32).tobytes())
    (state,) = settings(body, tmp_path).states
    assert state.initial.tolist() == [4, 5, 6]


def test_load_rejects_decoupled_sequence_models(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text("")
    config = parse_config_text(
        BASE.replace('name: "m"', f'name: "{tmp_path.name}"')
        + "model_transaction_policy { decoupled: true } sequence_batching { }"
    )
    with pytest.raises(Unsupported, match="decoupled"):
        complete_config(config, tmp_path, tmp_path.name, auto_complete=False, backend_configs={})


# -- tensors ---------------------------------------------------------------------------


def _request(**parameters: object) -> InferRequest:
    data = np.ones((1, 2), dtype=np.float32)
    return InferRequest(
        "m", inputs=[Tensor("IN", "FP32", [1, 2], data)], parameters=dict(parameters)
    )


def test_sequence_ids() -> None:
    assert sequence_id_of(_request(sequence_id=5), "m") == 5
    assert sequence_id_of(_request(sequence_id="x"), "m") == "x"
    for bad in ({}, {"sequence_id": 0}, {"sequence_id": ""}):
        with pytest.raises(InvalidArgument, match="non-zero or non-empty correlation ID"):
            sequence_id_of(_request(**bad), "m")
    with pytest.raises(InvalidArgument, match="unsigned integer or a string"):
        sequence_id_of(_request(sequence_id=1.5), "m")
    corrid = settings(CONTROLS).corrid
    check_corrid(corrid, 2**40, "m")
    with pytest.raises(InvalidArgument, match="must be an integer"):
        check_corrid(corrid, "x", "m")
    with pytest.raises(InvalidArgument, match="does not fit the data_type TYPE_INT64"):
        check_corrid(corrid, 2**63, "m")


def test_control_values_per_step() -> None:
    s = settings(CONTROLS)

    def values(**kwargs: object) -> dict[str, object]:
        tensors = control_tensors(s, True, **kwargs)
        assert all(t.shape == [1, 1] and list(t.data.shape) == [1, 1] for t in tensors)
        return {t.name: t.data.item() for t in tensors}

    assert values(start=True, end=False, ready=True, sequence_id=9) == {
        "S": 1,
        "E": 0.5,
        "R": True,
        "C": 9,
    }
    assert values(start=False, end=True, ready=True, sequence_id=9) == {
        "S": 0,
        "E": 2.5,
        "R": True,
        "C": 9,
    }
    # an empty slot: not ready, no START/END, correlation ID 0
    assert values(start=True, end=True, ready=False, sequence_id=None) == {
        "S": 0,
        "E": 0.5,
        "R": False,
        "C": 0,
    }
    (c,) = [
        t
        for t in control_tensors(s, False, start=False, end=False, ready=True, sequence_id=3)
        if t.name == "C"
    ]
    assert c.shape == [1] and c.datatype == "INT64"


def test_state_round_trip_and_null_requests() -> None:
    s = settings('state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [ 2 ] } ]')
    client = _request(sequence_id=1)
    request = backend_request(client, [], s, ["OUT"])
    assert [o.name for o in request.outputs or []] == ["OUT", "B"]
    assert client.outputs is None  # the client's request is left alone
    null = null_request(request, [Tensor("R", "BOOL", [1, 1], np.zeros((1, 1), bool))])
    assert null.input("IN") is not None and not null.input("IN").data.any()
    response = InferResponse(
        "m",
        "1",
        outputs=[
            Tensor("OUT", "FP32", [1, 2], np.ones((1, 2), np.float32)),
            Tensor("B", "FP64", [1, 2], np.full((1, 2), 3.0)),
        ],
    )
    state = split_state(response, s.states, True, "m")
    assert [t.name for t in response.outputs] == ["OUT"]
    assert state["A"].tolist() == [3.0, 3.0] and state["A"].dtype == np.float32
    # a state the model did not produce keeps its value (nothing to update)
    assert split_state(InferResponse("m", "1"), s.states, True, "m") == {}
    bad = InferResponse("m", "1", outputs=[Tensor("B", "FP32", [2, 2], np.ones((2, 2)))])
    with pytest.raises(InternalError, match="batch dimension of 1"):
        split_state(bad, s.states, True, "m")
    assert [
        o.name
        for o in backend_request(
            InferRequest("m", outputs=[RequestedOutput("OUT")]), [], s, ["OUT"]
        ).outputs
        or []
    ] == ["OUT", "B"]
