"""The response cache: hits skip the model; statistics and metrics count hits and misses."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.integration.conftest import copy_test_model


@pytest.fixture(scope="module")
def server(launch, tmp_path_factory):
    repo = tmp_path_factory.mktemp("cache_repo")
    copy_test_model(repo, "execution_counter", config_extra="response_cache { enable: true }\n")
    copy_test_model(repo, "execution_counter", as_name="uncached")
    return launch(repo, "--cache-config=local,size=1048576")


def _count(client, model: str, value: float) -> int:
    inp = httpclient.InferInput("INPUT0", [1, 2], "FP32")
    inp.set_data_from_numpy(np.full((1, 2), value, np.float32))
    return int(client.infer(model, [inp]).as_numpy("COUNT")[0, 0])


def test_identical_requests_are_answered_from_the_cache(server):
    client = httpclient.InferenceServerClient(server.http_url)
    first = _count(client, "execution_counter", 1.0)
    assert _count(client, "execution_counter", 1.0) == first  # the model did not run again
    assert _count(client, "execution_counter", 2.0) == first + 1  # other input: a miss
    stats = client.get_inference_statistics("execution_counter")["model_stats"][0][
        "inference_stats"
    ]
    assert stats["cache_hit"]["count"] == 1
    assert stats["cache_miss"]["count"] == 2
    assert stats["success"]["count"] == 3
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert 'nv_cache_num_hits_per_model{model="execution_counter",version="1"} 1' in text
    assert 'nv_cache_num_misses_per_model{model="execution_counter",version="1"} 2' in text


def test_models_without_response_cache_always_run(server):
    client = httpclient.InferenceServerClient(server.http_url)
    first = _count(client, "uncached", 1.0)
    assert _count(client, "uncached", 1.0) == first + 1
