"""The service spec: every validation error path names its field and reason."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from openeas.platform.errors import SpecError
from openeas.platform.repositories import RepositoryError, resolved_params, sync_repositories
from openeas.platform.spec import (
    DEFAULT_RESOURCE,
    merge_spec,
    parse_assignment,
    parse_spec_text,
    validate_spec,
)

#: The user's document's JSON, adapted: no GPU, the local resource group, a local path.
DOC: dict[str, Any] = {
    "name": "test_triton_processor",
    "processor": "triton",
    "processor_params": [
        "--model-repository=/models",
        "--allow-grpc=true",
        "--allow-http=true",
    ],
    "metadata": {
        "instance": 1,
        "cpu": 4,
        "gpu": 0,
        "memory": 10000,
        "resource": "default",
        "rpc.keepalive": 3000,
    },
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """DOC with one (dotted; metadata keys keep their dots) field set, or removed (...)."""
    doc = copy.deepcopy(DOC)
    head, _, rest = path.partition(".")
    target, key = (doc["metadata"], rest) if head == "metadata" and rest else (doc, path)
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return doc


def test_the_documents_spec_is_valid_and_gets_a_token() -> None:
    spec = validate_spec(DOC)
    assert spec.name == "test_triton_processor"
    assert spec.metadata.rpc_keepalive == 3000
    assert spec.metadata.rpc_max_queue_size == 64  # default
    assert len(spec.token) >= 32
    assert set(spec.token) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    assert validate_spec(DOC).token != spec.token  # random per service
    assert spec.to_json()["metadata"]["rpc.keepalive"] == 3000


def test_omitted_resource_means_the_default_group_and_a_given_token_is_kept() -> None:
    doc = with_change("metadata.resource", ...)
    doc["token"] = "my-own-token-123"
    spec = validate_spec(doc)
    assert spec.metadata.resource == DEFAULT_RESOURCE
    assert spec.token == "my-own-token-123"


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        ("name", "Bad-Name", "name", "lower-case"),
        ("name", "1abc", "name", "start with a lower-case letter"),
        ("name", "x" * 65, "name", "at most 64"),
        ("name", ..., "name", "required"),
        ("token", "short", "token", "8 to 256"),
        ("token", "has space inside", "token", "without spaces"),
        ("processor", "tensorflow", "processor", "'triton'"),
        ("processor", ..., "processor", "required"),
        ("processor_params", [], "processor_params", "at least 1"),
        ("processor_params", "--model-repository=/m", "processor_params", "list"),
        ("processor_params", ["--no-such-flag"], "processor_params[0]", "--no-such-flag"),
        (
            "processor_params",
            ["--allow-grpc=true"],
            "processor_params",
            "--model-repository is required",
        ),
        (
            "processor_params",
            ["--model-repository=/m", "--allow-http=perhaps"],
            "processor_params[1]",
            "invalid boolean",
        ),
        (
            "processor_params",
            ["--model-repository=/m", "--allow-http=false"],
            "processor_params",
            "needs HTTP",
        ),
        (
            "processor_params",
            ["--model-repository=/m", "--http-port=8000"],
            "processor_params[1]",
            "set by the platform",
        ),
        (
            "processor_params",
            ["--model-repository=/m", "--grpc-address=0.0.0.0"],
            "processor_params[1]",
            "set by the platform",
        ),
        (
            "processor_params",
            ["--model-repository=/m", "--http-unix-socket=@mine"],
            "processor_params[1]",
            "set by the platform",
        ),
        (
            "processor_params",
            ["--model-repository=/m", "--log-file=/home/someone/.bashrc"],
            "processor_params[1]",
            "--log-file is not allowed: the platform keeps each instance's log",
        ),
        (
            "processor_params",
            ["--model-repository=/m", "--metrics-port", "9"],
            "processor_params[1]",
            "set by the platform",
        ),
        (
            "processor_params",
            ["--model-repository=/m", "--grpc-use-ssl=true"],
            "processor_params[1]",
            "the gateway terminates TLS",
        ),
        (
            "processor_params",
            ["--model-repository=oss://bucket/models/../../other"],
            "processor_params[0]",
            "must not contain '..'",
        ),
        (
            "processor_params",
            ["--allow-grpc=true", "--model-repository", "/models/../etc"],
            "processor_params[2]",
            "must not contain '..'",
        ),
        (
            "processor_params",
            ["--model-repository=gs://bucket/models"],
            "processor_params[0]",
            "unsupported scheme 'gs://'",
        ),
        (
            "processor_params",
            ["--model-repository=oss://Bad_Bucket/models"],
            "processor_params[0]",
            "invalid bucket name",
        ),
        (
            "storage",
            [{"mount_path": "/models", "oss": {"path": "oss://b/../x"}}],
            "storage[0].oss.path",
            "'..'",
        ),
        (
            "processor_params",
            ["--model-repository=/m", "--log-verbose=x"],
            "processor_params[1]",
            "invalid integer",
        ),
        ("unknown_top", 1, "unknown_top", "unknown field"),
        ("autoscaler", {"min": 1}, "autoscaler.max", "required"),
        ("autoscaler", [1], "autoscaler", "must be a JSON object, got an array"),
        ("cronscaler", {"ScaleJobs": []}, "cronscaler.ScaleJobs", "at least one job"),
        ("metadata", "x", "metadata", "dictionary"),
        ("metadata.instance", -1, "metadata.instance", "greater than or equal to 0"),
        ("metadata.instance", "3", "metadata.instance", "valid integer"),
        ("metadata.cpu", 0, "metadata.cpu", "greater than or equal to 1"),
        ("metadata.memory", 10, "metadata.memory", "greater than or equal to 64"),
        ("metadata.gpu", -1, "metadata.gpu", "greater than or equal to 0"),
        ("metadata.gpu_memory", -2, "metadata.gpu_memory", "greater than or equal to 0"),
        ("metadata.resource", "", "metadata.resource", "must not be empty"),
        ("metadata.rpc.keepalive", 0, "metadata.rpc.keepalive", "greater than or equal to 1"),
        ("metadata.rpc.keepalive", "5s", "metadata.rpc.keepalive", "valid integer"),
        (
            "metadata.rpc.max_queue_size",
            0,
            "metadata.rpc.max_queue_size",
            "greater than or equal to 1",
        ),
        ("metadata.rpc.rate_limit", 0, "metadata.rpc.rate_limit", "greater than or equal to 1"),
        (
            "metadata.rpc.worker_threads",
            0,
            "metadata.rpc.worker_threads",
            "greater than or equal to 1",
        ),
        ("metadata.rpc.batching", "yes", "metadata.rpc.batching", "valid boolean"),
        (
            "metadata.rpc.batching",
            True,
            "metadata.rpc.max_batch_size",
            "required when rpc.batching",
        ),
        (
            "metadata.rpc.max_batch_size",
            0,
            "metadata.rpc.max_batch_size",
            "greater than or equal to 1",
        ),
        (
            "metadata.rpc.max_batch_timeout",
            -1,
            "metadata.rpc.max_batch_timeout",
            "greater than or equal to 0",
        ),
        ("metadata.rpc.unknown", 1, "metadata.rpc.unknown", "unknown field"),
        ("metadata.instances", 2, "metadata.instances", "unknown field"),
        ("storage", {"mount_path": "/m"}, "storage", "list"),
        (
            "storage",
            [{"mount_path": "m", "oss": {"path": "oss://b/p"}}],
            "storage[0].mount_path",
            "absolute",
        ),
        (
            "storage",
            [{"mount_path": "/m", "oss": {"path": "http://b/p"}}],
            "storage[0].oss.path",
            "oss://bucket",
        ),
        ("storage", [{"mount_path": "/m"}], "storage[0].oss", "required"),
        (
            "storage",
            [{"mount_path": "/m", "oss": {"path": "oss://b"}, "nfs": {}}],
            "storage[0].nfs",
            "unknown field",
        ),
        (
            "storage",
            [
                {"mount_path": "/m", "oss": {"path": "oss://b/1"}},
                {"mount_path": "/m", "oss": {"path": "oss://b/2"}},
            ],
            "storage",
            "unique",
        ),
    ],
)
def test_validation_errors_name_the_field_and_the_reason(
    path: str, value: Any, field: str, reason: str
) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(with_change(path, value))
    fields = {e.field: e.reason for e in info.value.errors}
    assert field in fields, info.value.errors
    assert reason.lower() in fields[field].lower(), fields[field]
    assert field in str(info.value)


def test_every_problem_is_reported_at_once() -> None:
    doc = with_change("name", "Bad")
    doc["metadata"]["instance"] = -1
    doc["extra"] = 1
    with pytest.raises(SpecError) as info:
        validate_spec(doc)
    assert {e.field for e in info.value.errors} == {"name", "metadata.instance", "extra"}


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '"x"'])
def test_spec_text_must_be_a_json_object(text: str) -> None:
    with pytest.raises(SpecError):
        parse_spec_text(text)


def test_assignments_and_merge() -> None:
    assert parse_assignment("metadata.instance=3") == {"metadata": {"instance": 3}}
    assert parse_assignment("metadata.rpc.keepalive=100") == {"metadata": {"rpc.keepalive": 100}}
    assert parse_assignment("metadata.resource=default") == {"metadata": {"resource": "default"}}
    assert parse_assignment('processor_params=["--model-repository=/x"]') == {
        "processor_params": ["--model-repository=/x"]
    }
    with pytest.raises(SpecError):
        parse_assignment("metadata.instance")
    merged = merge_spec(
        DOC, {"metadata": {"instance": 3}, "processor_params": ["--model-repository=/y"]}
    )
    assert merged["metadata"]["instance"] == 3
    assert merged["metadata"]["cpu"] == 4  # merged, not replaced
    assert merged["processor_params"] == ["--model-repository=/y"]  # lists replace
    assert DOC["metadata"]["instance"] == 1  # the base is not modified


def test_storage_mounts_turn_repository_paths_into_their_uris() -> None:
    doc = copy.deepcopy(DOC)
    doc["storage"] = [{"mount_path": "/models", "oss": {"path": "oss://bucket/repo/"}}]
    assert resolved_params(validate_spec(doc))[0] == "--model-repository=oss://bucket/repo"
    doc["processor_params"] = ["--model-repository", "/models/sub", "--log-verbose=1"]
    assert resolved_params(validate_spec(doc)) == [
        "--model-repository=oss://bucket/repo/sub",
        "--log-verbose=1",
    ]


def test_local_repositories_must_exist_and_be_absolute(tmp_path: Any) -> None:
    sync_repositories([f"--model-repository={tmp_path}"])
    with pytest.raises(RepositoryError, match="does not exist"):
        sync_repositories([f"--model-repository={tmp_path}/missing"])
    with pytest.raises(RepositoryError, match="relative path"):
        sync_repositories(["--model-repository=models"])


# -- autoscaler and cronscaler ----------------------------------------------------------

AUTOSCALER: dict[str, Any] = {
    "min": 1,
    "max": 8,
    "scaleStrategies": [
        {"metricName": "qps", "threshold": 100},
        {"metricName": "cpu", "threshold": 80},
    ],
    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}},
}
CRONSCALER: dict[str, Any] = {
    "ExcludeDates": ["* * * * * 6,0"],
    "ScaleJobs": [
        {"Name": "morning", "Schedule": "0 0 8 * * *", "TargetSize": 4, "TimeZone": "Asia/Shanghai"}
    ],
}


def test_autoscaler_and_cronscaler_are_kept_as_written_and_parsed_on_demand() -> None:
    spec = validate_spec({**DOC, "autoscaler": AUTOSCALER, "cronscaler": CRONSCALER})
    assert spec.to_json()["autoscaler"] == AUTOSCALER  # as written: no defaults filled in
    assert spec.to_json()["cronscaler"] == CRONSCALER
    scaler = spec.autoscaler_spec()
    assert scaler is not None and (scaler.min, scaler.max) == (1, 8)
    assert [s.metric.value for s in scaler.strategies] == ["qps", "cpu"]
    assert scaler.behavior.scale_down_window == 30 and scaler.behavior.scale_up_window == 0
    cron = spec.cronscaler_spec()
    assert cron is not None and cron.jobs[0].time_zone == "Asia/Shanghai"
    assert cron.exclude_dates == ("* * * * * 6,0",)
    bare = validate_spec(DOC)
    assert bare.autoscaler_spec() is None and bare.cronscaler_spec() is None
    assert "autoscaler" not in bare.to_json() and "cronscaler" not in bare.to_json()


def test_a_null_autoscaler_is_none() -> None:
    spec = validate_spec({**DOC, "autoscaler": None, "cronscaler": None})
    assert spec.autoscaler_spec() is None and "autoscaler" not in spec.to_json()


def test_the_older_autoscaler_form_is_accepted_and_kept() -> None:
    legacy = {"Min": 2, "Max": 5, "Strategies": {"qps": 10, "cpu": 70}}
    spec = validate_spec({**DOC, "autoscaler": legacy})
    assert spec.to_json()["autoscaler"] == legacy
    scaler = spec.autoscaler_spec()
    assert scaler is not None and (scaler.min, scaler.max) == (2, 5)
    assert {s.metric.value: s.threshold for s in scaler.strategies} == {"qps": 10, "cpu": 70}


def test_mixing_the_two_autoscaler_forms_is_refused() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({**DOC, "autoscaler": {"min": 1, "Max": 3, "Strategies": {"qps": 1}}})
    [error] = info.value.errors
    assert error.field == "autoscaler" and "mixes the current form" in error.reason


def test_every_problem_of_the_document_is_listed_at_once_with_its_path() -> None:
    doc = with_change("name", "Bad")
    doc["metadata"]["instance"] = -1
    doc["autoscaler"] = {
        "min": 5,
        "max": 2,
        "scaleStrategies": [{"metricName": "gpu", "threshold": 1}],
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": -5}},
    }
    doc["cronscaler"] = {
        "ScaleJobs": [{"Schedule": "0 0 8 * *", "TargetSize": 4, "TimeZone": "Mars/Base"}]
    }
    with pytest.raises(SpecError) as info:
        validate_spec(doc)
    found = {e.field: e.reason for e in info.value.errors}
    assert found["autoscaler.min"] == "must be <= max (2), got 5"
    assert found["autoscaler.scaleStrategies[0].metricName"].startswith("unsupported metric 'gpu'")
    assert found["autoscaler.behavior.scaleDown.stabilizationWindowSeconds"] == (
        "must be between 0 and 3600, got -5"
    )
    assert "6 fields" in found["cronscaler.ScaleJobs[0].Schedule"]
    assert "unknown time zone 'Mars/Base'" in found["cronscaler.ScaleJobs[0].TimeZone"]
    assert {"name", "metadata.instance"} <= set(found)  # the model's problems too
    assert "autoscaler.min: must be <= max (2), got 5" in str(info.value)


def test_elastic_problems_come_with_the_processor_params_ones() -> None:
    doc = with_change("processor_params", ["--model-repository=/m", "--http-port=1"])
    doc["autoscaler"] = {"min": 1, "max": 2, "scaleStrategies": []}
    with pytest.raises(SpecError) as info:
        validate_spec(doc)
    assert {e.field for e in info.value.errors} == {
        "processor_params[1]",
        "autoscaler.scaleStrategies",
    }


def test_a_non_object_autoscaler_is_reported_once() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec({**DOC, "autoscaler": 5})
    assert [str(e) for e in info.value.errors] == [
        "autoscaler: must be a JSON object, got a number"
    ]


@pytest.mark.parametrize("instance", [0, 1, 20])
def test_an_instance_count_outside_the_autoscaler_bounds_is_not_an_error(instance: int) -> None:
    """EAS starts the service with metadata.instance; the autoscaler moves it within
    [min, max] at its first decision."""
    doc = with_change("metadata.instance", instance)
    doc["autoscaler"] = {**AUTOSCALER, "min": 2, "max": 4}
    assert validate_spec(doc).metadata.instance == instance


def test_a_changed_document_is_parsed_anew() -> None:
    first = validate_spec({**DOC, "autoscaler": AUTOSCALER})
    assert first.autoscaler_spec().max == 8  # type: ignore[union-attr]
    second = validate_spec({**DOC, "autoscaler": {**AUTOSCALER, "max": 3}})
    assert second.autoscaler_spec().max == 3  # type: ignore[union-attr]
    assert first.autoscaler_spec().max == 8  # type: ignore[union-attr]
