"""``openeas up``: the control plane and the gateway as two processes under a supervisor.

The supervisor is small on purpose (it must not die): it binds the listening sockets
(the API's and the gateway's), starts the **control plane** (``openeas up --component=control-plane``: REST
API, reconciler, local runtime) and the **gateway** (``openeas gateway``, which follows
the routes through the API), and restarts either within a second when it dies.

* The components inherit the listening sockets (file descriptors): while one restarts,
  the supervisor's copies keep its ports open, so new connections wait in the backlog
  instead of being refused (an ``eascmd`` call during a control-plane restart waits).
* Each component's log lines (stderr) are forwarded into the platform log, next to the
  supervisor's own lines about starts, exits and restarts.
* ``$OPENEAS_HOME/platform.json`` names the supervisor's pid (``openeas down`` signals
  it) and each component's pid, start time and restarts (``openeas status``).
* With the Ray runtime and no storage endpoint it also runs the embedded S3 server's
  two processes (:mod:`openeas.storage.embedded_s3`), restarted like the others and
  stopped last.
* The components die with the supervisor (``PR_SET_PDEATHSIG``, see
  :mod:`openeas.platform.children`): a killed supervisor leaves no orphaned gateway or
  ``weed`` holding the ports; instances keep running and the next ``openeas up`` adopts
  them.  That ``openeas up`` first waits for the old components to be gone.

SIGTERM/SIGINT stop the control plane first (it stops the instances; services come back
on the next ``up``), then the gateway (in-flight requests finish).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from openeas.platform.children import parent_death_signal, wait_for_leftovers
from openeas.platform.client import runtime_info_path
from openeas.platform.errors import PlatformError
from openeas.transport.sockets import bind_socket

log = logging.getLogger("openeas.platform.supervisor")
_children_log = logging.getLogger("openeas.platform.component")

#: A component that ran at least this long restarts at once; one that keeps dying sooner
#: waits a little more each time, at most :data:`MAX_RESTART_DELAY`.
STABLE_AFTER = 10.0
MAX_RESTART_DELAY = 1.0
#: How often the supervisor looks at its components.
POLL_INTERVAL = 0.05


@dataclass
class Component:
    name: str
    argv: list[str]
    pass_fds: tuple[int, ...] = ()
    #: seconds the supervisor waits for it after SIGTERM before SIGKILL
    stop_timeout: float = 60.0
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    started_mono: float = 0.0
    restarts: int = 0
    streak: int = 0
    restart_at: float | None = None
    #: the thread copying its stderr into the platform log
    forwarder: threading.Thread | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.process.pid if self.process else None,
            "started_at": self.started_at,
            "restarts": self.restarts,
        }


def _forward(name: str, stream: IO[bytes]) -> None:
    """Copy a component's stderr lines into the platform log, as they are."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        if line:
            _children_log.info("%s", line, extra={"verbatim": True, "component": name})
    stream.close()


@dataclass
class Supervisor:
    #: what platform.json says besides the components (None: no platform.json, e.g. the
    #: workers of `openeas gateway --workers N`)
    info: dict[str, Any] | None
    components: list[Component] = field(default_factory=list)
    stopping: bool = False

    def start(self, comp: Component) -> None:
        comp.process = subprocess.Popen(
            comp.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=comp.pass_fds,
            # it dies with the supervisor (see openeas.platform.children)
            preexec_fn=parent_death_signal(signal.SIGKILL),
        )
        assert comp.process.stderr is not None
        comp.forwarder = threading.Thread(
            target=_forward, args=(comp.name, comp.process.stderr), daemon=True
        )
        comp.forwarder.start()
        comp.started_at, comp.started_mono = time.time(), time.monotonic()
        comp.restart_at = None
        log.info("%s started (pid %d)", comp.name, comp.process.pid)
        self.write_info()

    def write_info(self) -> None:
        if self.info is None:
            return
        info = {**self.info, "components": {c.name: c.to_json() for c in self.components}}
        path = runtime_info_path()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)

    def check(self, comp: Component) -> None:
        """Notice an exit (schedule a restart) and carry out a due restart."""
        now = time.monotonic()
        if comp.restart_at is not None:
            if now >= comp.restart_at:
                comp.restarts += 1
                self.start(comp)
            return
        assert comp.process is not None
        code = comp.process.poll()
        if code is None:
            return
        ran = now - comp.started_mono
        if comp.restarts == 0 and code > 0 and ran < STABLE_AFTER:
            # It could not start at all (a taken port, a bad flag): restarting would only
            # repeat the error, so `openeas up` fails with it instead.
            if comp.forwarder is not None:
                comp.forwarder.join(1.0)  # its last lines (the error) first
            raise PlatformError(f"the {comp.name} exited with status {code} at start-up")
        comp.streak = 0 if ran >= STABLE_AFTER else comp.streak + 1
        delay = min(MAX_RESTART_DELAY, 0.1 * (2**comp.streak - 1))
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        log.warning(
            "%s (pid %d) %s after %.1fs; restarting in %.1fs",
            comp.name, comp.process.pid, how, ran, delay,
        )  # fmt: skip
        comp.restart_at = now + delay

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(self, "stopping", True))
        try:
            for comp in self.components:
                self.start(comp)
            while not self.stopping:
                for comp in self.components:
                    self.check(comp)
                time.sleep(POLL_INTERVAL)
        finally:
            self.stop()

    def stop(self) -> None:
        """The control plane first (it stops the instances), then the gateway."""
        for comp in self.components:
            process = comp.process
            if process is None or process.poll() is not None:
                continue
            log.info("stopping %s (pid %d)", comp.name, process.pid)
            process.terminate()
            try:
                process.wait(comp.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs: killed", comp.name, comp.stop_timeout)
                process.kill()
                process.wait()
        if self.info is None:
            return
        with contextlib.suppress(FileNotFoundError, ValueError):
            path = runtime_info_path()
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


@dataclass
class SupervisedPlatform:
    """What ``openeas up`` hands the supervisor."""

    host: str
    api_port: int
    http_port: int
    grpc_port: int
    #: ``openeas up`` flags for the control plane (besides host and ports)
    control_plane_args: list[str]
    #: ``openeas gateway`` flags (besides the API, ports and sockets)
    gateway_args: list[str]
    stop_grace: float = 30.0
    #: more processes to run and restart (name -> command line), stopped last: the
    #: embedded S3 server of the Ray runtime (:mod:`openeas.storage.embedded_s3`)
    services: dict[str, list[str]] = field(default_factory=dict)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "openeas.cli.main", *args]


def supervise(options: SupervisedPlatform, home: Path) -> None:
    """Bind the gateway's ports, run both components until SIGTERM/SIGINT."""
    from openeas.platform.auth import gateway_credential_path, load_or_create_gateway_token

    load_or_create_gateway_token()
    # After a crash the old components may still be dying, holding the ports.
    for line in wait_for_leftovers(runtime_info_path()):
        log.warning("component of the previous platform: %s", line)
    api_socket = bind_socket(options.host, options.api_port)
    http = bind_socket(options.host, options.http_port)
    grpc = bind_socket(options.host, options.grpc_port)
    metrics = bind_socket("127.0.0.1", 0)
    fds = tuple(s.fileno() for s in (http, grpc, metrics))
    api_host = "127.0.0.1" if options.host in ("0.0.0.0", "::", "") else options.host
    api = f"http://{api_host}:{options.api_port}"
    metrics_url = f"http://127.0.0.1:{metrics.getsockname()[1]}/metrics"
    control = Component(
        "control-plane",
        cli(
            "up", "--component=control-plane", f"--host={options.host}",
            f"--api-port={options.api_port}", f"--http-port={options.http_port}",
            f"--grpc-port={options.grpc_port}", f"--gateway-metrics={metrics_url}",
            f"--api-fd={api_socket.fileno()}", *options.control_plane_args,
        ),
        pass_fds=(api_socket.fileno(),),
        stop_timeout=options.stop_grace + 30,
    )  # fmt: skip
    gateway = Component(
        "gateway",
        cli(
            "gateway", f"--api={api}", f"--credential={gateway_credential_path()}",
            f"--host={options.host}", f"--http-port={options.http_port}",
            f"--grpc-port={options.grpc_port}", f"--inherit-fds={','.join(map(str, fds))}",
            "--gateway-id=local", f"--snapshot={home / 'routes.json'}", *options.gateway_args,
        ),
        pass_fds=fds,
        stop_timeout=options.stop_grace + 5,
    )  # fmt: skip
    info = {
        "pid": os.getpid(),
        "api": api,
        "gateway_http": options.http_port,
        "gateway_grpc": options.grpc_port,
    }
    services = [Component(name, argv, stop_timeout=10) for name, argv in options.services.items()]
    supervisor = Supervisor(info, [control, gateway, *services])
    log.info("platform up: API %s, gateway :%d/:%d", api, options.http_port, options.grpc_port)
    try:
        supervisor.run()
    finally:
        for sock in (api_socket, http, grpc, metrics):
            sock.close()
