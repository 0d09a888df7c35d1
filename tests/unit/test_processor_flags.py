"""One flag schema for both sides: every processor_params combination that makes
``openeas-server`` exit at start-up is refused by the spec validation (``eascmd create``)
with the very message the processor prints, at the index of the flag it is about."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openeas.platform.errors import SpecError
from openeas.platform.spec import validate_spec
from openeas.processor_flags import (
    REPOSITORY_FLAGS,
    FlagProblem,
    FlagValue,
    flag_values,
    validate,
)

REPO = "--model-repository=/models"

#: (processor_params, [(index or None, message)]): what the processor prints, per line.
EXITS_AT_START: list[tuple[list[str], list[tuple[int | None, str]]]] = [
    ([REPO, "--no-such-flag=1"], [(1, "unrecognized arguments: --no-such-flag=1")]),
    (
        [REPO, "--allow-grpc=maybe"],
        [(1, "argument --allow-grpc: invalid boolean value 'maybe' (use true/false/on/off/1/0)")],
    ),
    (
        [REPO, "--model-control-mode", "sometimes"],
        [
            (
                1,
                "argument --model-control-mode: invalid choice: 'sometimes' "
                "(choose from 'none', 'poll', 'explicit')",
            )
        ],
    ),
    (["--allow-grpc=true"], [(None, "--model-repository is required")]),
    (
        ["--model-repository"],
        [
            (0, "argument --model-repository/--model-store: expected one argument"),
            (None, "--model-repository is required"),
        ],
    ),
    ([REPO, "--load-model=a"], [(1, "--load-model requires --model-control-mode=explicit")]),
    (
        [REPO, "--model-control-mode=poll", "--load-model", "a", "--load-model=b"],
        [(2, "--load-model requires --model-control-mode=explicit")],
    ),
    (
        [REPO, "--cache-config=redis,host=x"],
        [(1, "argument --cache-config: invalid value 'redis,host=x', expected local,size=<bytes>")],
    ),
    ([REPO, "--cache-config", "local,size=big"], [(1, "argument --cache-config: invalid size 'big'")]),
    ([REPO, "--cache-config=local,size=-1"], [(1, "argument --cache-config: size must be >= 0, got -1")]),
    ([REPO, "--http-max-header-count=-1"], [(1, "argument --http-max-header-count: value must be >= 0, got -1")]),
    (
        [REPO, "--http-header-timeout=0"],
        [(1, "argument --http-header-timeout: value must be a finite number > 0, got 0")],
    ),
    (
        [REPO, "--repository-poll-secs=nan"],
        [(1, "argument --repository-poll-secs: value must be a finite number > 0, got nan")],
    ),
    ([REPO, "--grpc-max-concurrent-streams=0"], [(1, "argument --grpc-max-concurrent-streams: value must be > 0, got 0")]),
    (
        [REPO, "--grpc-http2-max-ping-strikes", "x"],
        [(1, "argument --grpc-http2-max-ping-strikes: invalid integer value 'x'")],
    ),
    (
        [REPO, "--backend-config=onnxruntime"],
        [
            (
                1,
                "argument --backend-config: invalid --backend-config 'onnxruntime', "
                "expected <backend>,<setting>=<value>",
            )
        ],
    ),
    (
        [REPO, "--disable-auto-complete-config=yes"],
        [(1, "argument --disable-auto-complete-config: ignored explicit argument 'yes'")],
    ),
    ([REPO, "--log-verbose"], [(1, "argument --log-verbose: expected one argument")]),
    ([REPO, "--pinned-memory-pool-byte-size=-4"], [(1, "argument --pinned-memory-pool-byte-size: value must be >= 0, got -4")]),
    # every problem, each at its flag, in order; the combination checks last
    (
        ["--log-verbose=x", "--load-model=a", "--strict-readiness=perhaps", "--bogus"],
        [
            (0, "argument --log-verbose: invalid integer value 'x'"),
            (2, "argument --strict-readiness: invalid boolean value 'perhaps' (use true/false/on/off/1/0)"),
            (3, "unrecognized arguments: --bogus"),
            (None, "--model-repository is required"),
            (1, "--load-model requires --model-control-mode=explicit"),
        ],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("params", "expected"), EXITS_AT_START)
def test_create_refuses_what_the_processor_exits_on_with_its_message(
    params: list[str], expected: list[tuple[int | None, str]]
) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "openeas.server.cli", *params],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2, process.stderr
    printed = process.stderr.strip().splitlines()
    assert printed == [f"openeas-server: error: {message}" for _, message in expected]

    with pytest.raises(SpecError) as info:
        validate_spec({"name": "svc", "processor": "triton", "processor_params": params})
    reported = [(e.field, e.reason) for e in info.value.errors]
    for index, message in expected:
        field = "processor_params" if index is None else f"processor_params[{index}]"
        assert (field, message) in reported, reported


def test_valid_flags_pass_both_and_keep_their_values() -> None:
    params = [
        REPO,
        "--model-control-mode=explicit",
        "--load-model",
        "a",
        "--cache-config=local,size=64",
    ]
    parsed = validate(params)
    assert parsed.problems == [] and parsed.namespace is not None
    assert parsed.namespace.load_model == ["a"] and parsed.namespace.cache_config == [64]
    assert validate_spec({"name": "svc", "processor": "triton", "processor_params": params})


def test_tls_without_files_is_a_processor_problem_and_a_platform_refusal() -> None:
    params = [REPO, "--grpc-use-ssl-mutual=true", "--grpc-server-cert=c.pem"]
    assert validate(params).problems == [
        FlagProblem(1, "--grpc-server-key is required with --grpc-use-ssl"),
        FlagProblem(1, "--grpc-root-cert is required with --grpc-use-ssl-mutual"),
    ]
    with pytest.raises(SpecError) as info:  # the platform's reason, once per flag
        validate_spec({"name": "svc", "processor": "triton", "processor_params": params})
    fields = [e.field for e in info.value.errors]
    assert fields == ["processor_params[1]", "processor_params[2]"]
    assert "the gateway terminates TLS" in info.value.errors[0].reason


def test_help_and_version_are_refused_by_the_spec_but_print_in_the_processor() -> None:
    problems = validate([REPO, "--version"]).problems
    assert problems == [FlagProblem(1, "--version only prints and exits; it sets nothing")]
    process = subprocess.run(
        [sys.executable, "-m", "openeas.server.cli", "--version"], capture_output=True, text=True
    )
    assert process.returncode == 0 and "openeas-server" in process.stdout


def test_flag_values_tell_values_from_options_as_argparse_does() -> None:
    argv = ["--model-store", "/a", "--log-verbose=1", "--model-repository=/b"]
    argv += ["--model-repository", "--id=x", "--model-repository", "-1"]
    assert flag_values(argv, REPOSITORY_FLAGS) == [
        FlagValue(0, 1, "/a"),
        FlagValue(3, 3, "/b"),
        FlagValue(6, 7, "-1"),  # a negative number is a value, as in argparse
    ]
