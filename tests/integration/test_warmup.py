"""``model_warmup``: samples run on every instance before the model is ready."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from openeas.testing.onnx_models import ADD_SUB_CONFIG, write_add_sub_model, write_model_config
from tests.integration.conftest import copy_test_model

WARMUP = """
model_warmup [
  {
    name: "zeros" batch_size: 2 count: 3
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } }
  },
  {
    name: "random"
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 2 ] random_data: true } }
  },
  {
    name: "from_file"
    inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "input0" } }
  }
]
"""


@pytest.fixture(scope="module")
def server(launch, tmp_path_factory):
    repo = tmp_path_factory.mktemp("warmup_repo")
    counter = copy_test_model(repo, "execution_counter", config_extra=WARMUP)
    (counter / "warmup").mkdir()
    (counter / "warmup" / "input0").write_bytes(np.array([1.5, 2.5], np.float32).tobytes())
    write_add_sub_model(repo / "simple" / "1")
    write_model_config(
        repo / "simple",
        ADD_SUB_CONFIG
        + """
model_warmup [ { name: "bad_dims" batch_size: 1
  inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } }
  inputs { key: "INPUT1" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } } ]
""",
    )
    return launch(repo, "--exit-on-error=false", "--strict-readiness=false")


def test_samples_ran_before_the_first_request(server):
    client = httpclient.InferenceServerClient(server.http_url)
    data = np.zeros((1, 2), np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 2], "FP32")
    inp.set_data_from_numpy(data)
    count = client.infer("execution_counter", [inp]).as_numpy("COUNT")
    # 3 x "zeros" + 1 x "random" + 1 x "from_file" ran first; this request is the 6th.
    assert count.tolist() == [[6]]
    stats = client.get_inference_statistics("execution_counter")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 1  # warmup is not client traffic


def test_failing_warmup_fails_the_load_with_the_sample_name(server):
    client = httpclient.InferenceServerClient(server.http_url)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["simple"]["state"] == "UNAVAILABLE"
    assert "bad_dims" in index["simple"]["reason"]
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("simple")
