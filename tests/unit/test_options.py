import subprocess
import sys

import pytest

from openeas.server.options import parse_args


def test_defaults_match_tritonserver():
    options = parse_args(["--model-repository=/m"])
    assert (options.http_port, options.grpc_port, options.metrics_port) == (8000, 8001, 8002)
    assert options.model_control_mode == "none"
    assert options.strict_readiness and options.exit_on_error and options.auto_complete
    assert options.exit_timeout_secs == 30
    assert options.http_max_input_size == 64 * 1024 * 1024


def test_both_spellings_booleans_and_repeats():
    options = parse_args(
        [
            "--model-store",
            "/a",
            "--model-repository=/b",
            "--allow-grpc=off",
            "--strict-readiness",
            "0",
            "--model-control-mode=explicit",
            "--load-model=x",
            "--load-model",
            "y",
            "--backend-config=onnxruntime,default-max-batch-size=8",
            "--backend-config=python,shm=1",
            "--pinned-memory-pool-byte-size=0",
            "--strict-model-config=true",
        ]
    )
    assert options.model_repositories == ["/a", "/b"]
    assert options.allow_grpc is False and options.strict_readiness is False
    assert options.load_models == ["x", "y"]
    assert options.backend_configs["onnxruntime"] == {"default-max-batch-size": "8"}
    assert options.auto_complete is False
    assert any("pinned-memory-pool-byte-size" in flag for flag in options.ignored)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model-repository=/m", "--no-such-flag=1"], "--no-such-flag"),
        (["--model-repository=/m", "--allow-http=maybe"], "maybe"),
        (["--model-repository=/m", "--http-port=99999"], "99999"),
        (["--model-repository=/m", "--model-control-mode=sometimes"], "sometimes"),
        ([], "--model-repository"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, named):
    result = subprocess.run(
        [sys.executable, "-m", "openeas.server.cli", *args], capture_output=True, text=True
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert named in lines[0]


def test_grpc_http2_limits():
    from openeas.server.frontends.grpc import http2_limits
    from openeas.transport.http2_peer import Http2Limits

    defaults = http2_limits(parse_args(["--model-repository=/m"]))
    assert defaults == Http2Limits()
    assert (defaults.max_ping_strikes, defaults.min_ping_interval_s) == (2, 300.0)  # Triton's
    options = parse_args([
        "--model-repository=/m", "--grpc-max-concurrent-streams=10",
        "--grpc-max-header-list-size", "4096", "--grpc-http2-max-ping-strikes=0",
        "--grpc-http2-min-recv-ping-interval-without-data=1500",
        "--grpc-keepalive-permit-without-calls=true",
    ])  # fmt: skip
    limits = http2_limits(options)
    assert limits.max_concurrent_streams == 10 and limits.max_header_list_size == 4096
    assert limits.max_ping_strikes == 0 and limits.min_ping_interval_s == 1.5
    assert limits.ping_without_calls and not options.ignored
    with pytest.raises(SystemExit):
        parse_args(["--model-repository=/m", "--grpc-max-concurrent-streams=0"])
