"""The standard ``grpc.health.v1.Health`` service on the gRPC port (raw channels)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from openeas.server.frontends.grpc import GrpcFrontend
from openeas.server.frontends.grpc_health import (
    ServingStatus,
    decode_check_request,
    decode_check_response,
    encode_check_request,
    encode_check_response,
)
from openeas.server.options import ServerOptions
from openeas.testing.onnx_models import ADD_SUB_CONFIG, write_add_sub_model, write_model_config
from openeas.testing.server import ServerProcess, start_server

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("health_repo")
    write_add_sub_model(root / "simple" / "1")
    write_model_config(root / "simple", ADD_SUB_CONFIG)
    process = start_server(root, log_path=tmp_path_factory.mktemp("health_logs") / "server.log")
    yield process
    assert process.stop() == 0, process.log()


def _check(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        CHECK,
        request_serializer=encode_check_request,
        response_deserializer=decode_check_response,
    )


def test_wire_format_round_trip() -> None:
    assert encode_check_request("") == b""
    assert encode_check_request("x" * 200)[:3] == b"\x0a\xc8\x01"
    assert decode_check_request(encode_check_request("inference.GRPCInferenceService")) == (
        "inference.GRPCInferenceService"
    )
    # unknown fields (varint 2, fixed64 3, fixed32 4) are skipped
    extra = b"\x10\x05" + b"\x19" + bytes(8) + b"\x25" + bytes(4)
    assert decode_check_request(extra + encode_check_request("svc")) == "svc"
    with pytest.raises(ValueError):
        decode_check_request(b"\x0a\x05ab")
    assert encode_check_response(ServingStatus.UNKNOWN) == b""
    for status in ServingStatus:
        assert decode_check_response(encode_check_response(status)) is status


def test_check_on_a_ready_server(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        check = _check(channel)
        assert check("") is ServingStatus.SERVING
        assert check("inference.GRPCInferenceService") is ServingStatus.SERVING
        with pytest.raises(grpc.RpcError) as info:
            check("no.such.Service")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # a client that serializes by hand (empty request = service "")
        raw = channel.unary_unary(CHECK)
        assert raw(b"") == b"\x08\x01"


def test_watch_sends_the_current_status(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        watch = channel.unary_stream(
            WATCH,
            request_serializer=encode_check_request,
            response_deserializer=decode_check_response,
        )
        call = watch("")
        assert next(call) is ServingStatus.SERVING
        call.cancel()
        unknown = watch("no.such.Service")
        assert next(unknown) is ServingStatus.SERVICE_UNKNOWN
        unknown.cancel()


class _ToggleDataPlane:
    def __init__(self) -> None:
        self.is_ready = False

    def ready(self) -> bool:
        return self.is_ready


def test_status_follows_readiness() -> None:
    async def run() -> None:
        dataplane = _ToggleDataPlane()
        options = ServerOptions(model_repositories=[], grpc_address="127.0.0.1", grpc_port=0)
        frontend = GrpcFrontend(dataplane, options)  # type: ignore[arg-type]
        await frontend.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
                check = channel.unary_unary(
                    CHECK,
                    request_serializer=encode_check_request,
                    response_deserializer=decode_check_response,
                )
                assert await check("") is ServingStatus.NOT_SERVING
                watch = channel.unary_stream(
                    WATCH,
                    request_serializer=encode_check_request,
                    response_deserializer=decode_check_response,
                )
                call = watch("inference.GRPCInferenceService")
                assert await call.read() is ServingStatus.NOT_SERVING
                dataplane.is_ready = True
                assert await asyncio.wait_for(call.read(), 5) is ServingStatus.SERVING
                call.cancel()
                assert await check("") is ServingStatus.SERVING
        finally:
            await frontend.stop(0)

    asyncio.run(run())

