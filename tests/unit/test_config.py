import pytest

from openeas.protocol.errors import InvalidArgument
from openeas.server.repository.config import config_to_dict, parse_config_text
from openeas.server.repository.normalize import complete_config

CONFIG = """
name: "m"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_INT64 dims: [ -1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
"""


def test_config_json_as_triton_prints_it(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.py").write_text("class TritonPythonModel: pass\n")
    config = complete_config(
        parse_config_text(CONFIG), tmp_path / "m", "m", auto_complete=False, backend_configs={}
    )
    data = config_to_dict(config)
    assert data["input"][0]["dims"] == [4]
    assert data["output"][0]["dims"] == [-1]
    assert data["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert data["version_policy"] == {"latest": {"num_versions": 1}}
    assert data["instance_group"][0]["kind"] == "KIND_CPU"
    assert data["instance_group"][0]["count"] == 1


def test_parse_error_names_the_source():
    with pytest.raises(InvalidArgument, match="my.pbtxt"):
        parse_config_text("name: ", "my.pbtxt")


def test_name_mismatch_and_missing_type(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(InvalidArgument, match="unexpected 'name'"):
        complete_config(
            parse_config_text('name: "other" backend: "python"'),
            tmp_path / "m",
            "m",
            auto_complete=False,
            backend_configs={},
        )
    bad = 'backend: "python" input [ { name: "x" dims: [1] } ]'
    with pytest.raises(InvalidArgument, match="data_type"):
        complete_config(
            parse_config_text(bad), tmp_path / "m", "m", auto_complete=False, backend_configs={}
        )


def test_missing_config_needs_auto_complete(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(InvalidArgument, match="missing"):
        complete_config(None, tmp_path / "m", "m", auto_complete=False, backend_configs={})


@pytest.mark.parametrize(
    ("batching", "message"),
    [
        (
            "priority_levels: 2 default_priority_level: 3",
            r"default_priority_level must be in range \[1, 2\]",
        ),
        ("priority_levels: 2 default_priority_level: 0", "default_priority_level"),
        ("default_priority_level: 1", "need priority_levels > 0"),
        (
            "priority_levels: 2 default_priority_level: 1 "
            "priority_queue_policy { key: 5 value: { max_queue_size: 1 } }",
            "level 5",
        ),
    ],
)
def test_priority_settings_must_name_existing_levels(tmp_path, batching, message):
    (tmp_path / "m" / "1").mkdir(parents=True)
    text = CONFIG.replace(
        "dynamic_batching { max_queue_delay_microseconds: 100 }",
        f"dynamic_batching {{ {batching} }}",
    )
    with pytest.raises(InvalidArgument, match=message):
        complete_config(
            parse_config_text(text), tmp_path / "m", "m", auto_complete=False, backend_configs={}
        )
