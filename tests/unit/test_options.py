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
    options = parse_args([
        "--model-store", "/a", "--model-repository=/b", "--allow-grpc=off", "--strict-readiness", "0",
        "--model-control-mode=explicit", "--load-model=x", "--load-model", "y",
        "--backend-config=onnxruntime,default-max-batch-size=8", "--backend-config=python,shm=1",
        "--pinned-memory-pool-byte-size=0", "--strict-model-config=true",
    ])
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
