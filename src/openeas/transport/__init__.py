"""Transports shared by the processor (``server/``) and the gateway (``gateway/``).

On the running asyncio loop, over the sans-IO wire helpers of :mod:`openeas.protocol`:
HTTP/1.1 framing (:mod:`.http1`), the HTTP/2 connection both ends share (:mod:`.http2_peer`),
the gRPC server transport (:mod:`.grpc_transport`: the connection; :mod:`.grpc_stream`:
a call's state; :mod:`.grpc_call`: methods, errors and statuses), eager request
coroutines (:mod:`.eager`) and socket helpers (:mod:`.sockets`).  Nothing here imports
``server/``, ``gateway/`` or ``platform/``: they import it.
"""
