import subprocess
import sys

from openeas import __version__


def _openeas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openeas.cli.main", *args], capture_output=True, text=True
    )


def test_version_and_help():
    assert __version__ in _openeas("--version").stdout
    assert "serve" in _openeas("--help").stdout


def test_serve_passes_tritonserver_flags_through():
    result = _openeas("serve", "--model-repository=/m", "--no-such-flag")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr
    assert "--model-repository" in _openeas("serve", "--help").stdout
