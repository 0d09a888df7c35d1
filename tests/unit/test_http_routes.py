"""The HTTP front end's route table for the non-infer paths (the segments after /v2)."""

from __future__ import annotations

import pytest

from openeas.server.frontends.http import HttpFrontend, _find_route


@pytest.mark.parametrize(
    ("path", "handler", "params"),
    [
        ("", HttpFrontend._server_metadata, {}),
        ("health/ready", HttpFrontend._ready, {}),
        ("models/stats", HttpFrontend._all_statistics, {}),
        ("models/stats/ready", HttpFrontend._model_ready, {"model": "stats"}),
        ("models/m", HttpFrontend._model_metadata, {"model": "m"}),
        ("models/m/versions/2", HttpFrontend._model_metadata, {"model": "m", "version": "2"}),
        ("models/m/versions/2/config", HttpFrontend._model_config, {"model": "m", "version": "2"}),
        ("models/m/infer", HttpFrontend._model_infer, {"model": "m"}),
        ("models/m/trace/setting", HttpFrontend._model_trace, {"model": "m"}),
        (
            "models/m/versions/1/trace/setting",
            HttpFrontend._model_trace,
            {"model": "m", "version": "1"},
        ),
        ("repository/models/m/unload", HttpFrontend._repository_unload, {"model": "m"}),
        ("logging", HttpFrontend._logging_route, {}),
        ("trace/setting", HttpFrontend._server_trace, {}),
        (
            "cudasharedmemory/region/r/register",
            HttpFrontend._cuda_shared_memory_route,
            {"region": "r", "action": "register"},
        ),
        ("systemsharedmemory/status", HttpFrontend._system_shared_memory, {"action": "status"}),
    ],
)
def test_paths_find_their_handler_and_captures(path: str, handler, params) -> None:
    found = _find_route(path.split("/") if path else [])
    assert found == (handler, params)


@pytest.mark.parametrize(
    "path",
    [
        "models",
        "models/m/versions",
        "models/m/versions/1/versions/2",
        "models/m/bogus",
        "repository/models/m/delete",
        "health",
        "health/sick",
        "trace",
        "logging/x",
    ],
)
def test_other_paths_have_none(path: str) -> None:
    assert _find_route(path.split("/")) is None
