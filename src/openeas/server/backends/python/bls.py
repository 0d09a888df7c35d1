"""Business Logic Scripting: a Python model running requests on other loaded models.

``pb_utils.InferenceRequest.exec()`` calls :func:`exec_blocking` on the model's own
thread, which waits on the server's :class:`InferenceHandle`.  ``async_exec()`` runs
:func:`exec_async` on the instance's event loop: the request is scheduled on the
server's loop and awaited through :func:`asyncio.wrap_future`, so several BLS
requests can be in flight at once.  Errors of the called model are returned in the
response (``response.error()``), as Triton does; they are never raised.
"""

from __future__ import annotations

import asyncio

from openeas.protocol.errors import InternalError, Unavailable
from openeas.server.backends.base import BlockingCallOnLoop, InferenceHandle
from openeas.server.backends.python import _runtime, convert
from openeas.server.backends.python import triton_python_backend_utils as pb


def _handle() -> InferenceHandle | None:
    return _runtime.current_handle()


def _no_handle_response() -> pb.InferenceResponse:
    return convert.error_response(
        Unavailable("BLS requests are not available: the Python backend has no inference handle")
    )


def _timeout_s(request: pb.InferenceRequest) -> float | None:
    timeout_us = request.timeout()
    return timeout_us / 1_000_000 if timeout_us > 0 else None


def _timeout_response(request: pb.InferenceRequest) -> pb.InferenceResponse:
    return convert.error_response(
        InternalError(f"BLS request to model '{request.model_name()}' timed out")
    )


def exec_blocking(request: pb.InferenceRequest) -> pb.InferenceResponse:
    """Run a BLS request and wait for its response (from a worker thread)."""
    handle = _handle()
    if handle is None:
        return _no_handle_response()
    try:
        server_request = convert.to_bls_request(request)
        response = handle.infer_blocking(server_request, timeout=_timeout_s(request))
    except TimeoutError:
        return _timeout_response(request)
    except BlockingCallOnLoop as exc:
        # The model ran on the event loop because its source showed no BLS (the call
        # comes from a helper module): this request fails, later ones run on the
        # instance's thread, where a blocking call is fine.
        if _runtime.revoke_current_inline(str(exc)):
            exc = BlockingCallOnLoop(
                f"{exc}; the model instance runs on its own thread from now on: retry"
            )
        return convert.error_response(exc)
    except Exception as exc:  # the model sees every failure as an error response
        return convert.error_response(exc)
    return convert.from_bls_response(response)


async def exec_async(
    request: pb.InferenceRequest, decoupled: bool = False
) -> pb.InferenceResponse | pb.ResponseIterator:
    """Run a BLS request on the server's loop and await it from the instance's loop."""
    handle = _handle()
    if handle is None:
        response = _no_handle_response()
    else:
        try:
            server_request = convert.to_bls_request(request)
            coroutine = handle.infer(server_request)
            try:
                future = asyncio.run_coroutine_threadsafe(coroutine, handle.loop)
            except BaseException:
                coroutine.close()
                raise
            waiter = asyncio.wrap_future(future)
            timeout = _timeout_s(request)
            result = await (asyncio.wait_for(waiter, timeout) if timeout else waiter)
            response = convert.from_bls_response(result)
        except TimeoutError:
            response = _timeout_response(request)
        except Exception as exc:  # the model sees every failure as an error response
            response = convert.error_response(exc)
    return pb.ResponseIterator([response]) if decoupled else response
