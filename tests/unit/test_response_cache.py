import numpy as np

from openeas.protocol.types import InferRequest, InferResponse, Tensor
from openeas.server.cache import ResponseCache


def _request(value: float) -> InferRequest:
    data = np.full((1, 4), value, np.float32)
    return InferRequest("m", inputs=[Tensor("x", "FP32", [1, 4], data)], id="r")


def _response(nbytes: int) -> InferResponse:
    return InferResponse(
        "m", "1", outputs=[Tensor("y", "UINT8", [nbytes], np.zeros(nbytes, np.uint8))]
    )


def test_lru_evicts_the_least_recently_used_entry():
    cache = ResponseCache(capacity=300)
    keys = [ResponseCache.key(_request(v), "1") for v in (1, 2, 3)]
    assert len(set(keys)) == 3
    cache.put(keys[0], _response(100))
    cache.put(keys[1], _response(100))
    assert cache.get(keys[0], _request(1), "1") is not None  # 0 is now the most recent
    cache.put(keys[2], _response(100))
    assert cache.get(keys[1], _request(2), "1") is None  # 1 was evicted
    assert cache.get(keys[0], _request(1), "1") is not None
    assert cache.used <= cache.capacity


def test_entries_larger_than_the_cache_are_not_stored_and_are_read_only():
    cache = ResponseCache(capacity=50)
    key = ResponseCache.key(_request(1), "1")
    cache.put(key, _response(100))
    assert len(cache) == 0
    small = ResponseCache(capacity=1000)
    small.put(key, _response(10))
    hit = small.get(key, _request(1), "1")
    assert hit is not None and hit.id == "r"
    assert not hit.outputs[0].data.flags.writeable
