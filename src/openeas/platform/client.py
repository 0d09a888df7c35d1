"""A Python client of the control-plane API (what ``eascmd`` uses).

``PlatformClient.from_config()`` needs no set-up on the platform's own machine: it reads
the endpoint from the running platform's ``$OPENEAS_HOME/platform.json`` and the admin key
from ``$OPENEAS_HOME/credentials``, unless ``eascmd config`` saved an explicit endpoint
and key pair in ``$OPENEAS_HOME/eascmd.json``.
"""

from __future__ import annotations

import builtins  # PlatformClient.list shadows the builtin in the class body
import json
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx

from openeas.home import openeas_home
from openeas.platform.auth import AccessKey, credentials_path, load_key, sign
from openeas.platform.errors import PlatformError, error_from_json

DEFAULT_ENDPOINT = "http://127.0.0.1:9090"


def client_config_path() -> Path:
    return openeas_home() / "eascmd.json"


def runtime_info_path() -> Path:
    """Written by a running platform: its pid, API endpoint and gateway addresses."""
    return openeas_home() / "platform.json"


def save_client_config(key: AccessKey, endpoint: str) -> Path:
    path = client_config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file may have been readable by others
    with os.fdopen(fd, "w") as handle:
        json.dump(
            {"access_key_id": key.id, "access_key_secret": key.secret, "endpoint": endpoint}, handle
        )
    return path


class _Signer(httpx.Auth):
    requires_request_body = True

    def __init__(self, key: AccessKey) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        target = request.url.raw_path.decode()
        request.headers.update(sign(self.key, request.method, target, request.content))
        yield request


class PlatformClient:
    """Typed calls of the control-plane API; errors raise :class:`PlatformError` subtypes."""

    def __init__(self, endpoint: str, key: AccessKey, timeout: float = 30.0) -> None:
        if "://" not in endpoint:
            endpoint = f"http://{endpoint}"
        self.endpoint = endpoint.rstrip("/")
        self._http = httpx.Client(
            base_url=self.endpoint + "/api/v1", auth=_Signer(key), timeout=timeout
        )

    @classmethod
    def from_config(cls) -> PlatformClient:
        """The explicit ``eascmd config``, else the local platform's own credentials."""
        config = client_config_path()
        if config.exists():
            doc = json.loads(config.read_text())
            return cls(doc["endpoint"], AccessKey(doc["access_key_id"], doc["access_key_secret"]))
        creds = credentials_path()
        if not creds.exists():
            raise PlatformError(
                f"no credentials: start the platform with 'openeas up' (creates {creds}) "
                "or run 'eascmd config -i AK -k SK -e ENDPOINT'"
            )
        endpoint = DEFAULT_ENDPOINT
        info = runtime_info_path()
        if info.exists():
            endpoint = json.loads(info.read_text()).get("api", endpoint)
        return cls(endpoint, load_key(creds))

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise PlatformError(
                f"cannot reach the control plane at {self.endpoint}: {exc}"
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text.strip() or f"HTTP {response.status_code}"}
            raise error_from_json(response.status_code, body if isinstance(body, dict) else {})
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    # -- services ---------------------------------------------------------------------

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/services", json=spec)

    def describe(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/services/{name}")

    def list(self) -> list[dict[str, Any]]:
        return self._json("GET", "/services")

    def modify(self, name: str, spec: dict[str, Any], mode: str = "merge") -> dict[str, Any]:
        return self._json("PUT", f"/services/{name}", json={"spec": spec, "mode": mode})

    def set_elastic(self, name: str, field: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Set ``autoscaler`` or ``cronscaler`` (``field``) to ``doc``; the service's view."""
        return self._json("PUT", f"/services/{name}/{field}", json=doc)

    def remove_elastic(self, name: str, field: str) -> dict[str, Any]:
        return self._json("DELETE", f"/services/{name}/{field}")

    def versions(self, name: str) -> builtins.list[dict[str, Any]]:
        return self._json("GET", f"/services/{name}/versions")

    def switch(self, name: str, version: int) -> dict[str, Any]:
        return self._json("POST", f"/services/{name}/switch", json={"version": version})

    def stop(self, name: str) -> dict[str, Any]:
        return self._json("POST", f"/services/{name}/stop")

    def start(self, name: str) -> dict[str, Any]:
        return self._json("POST", f"/services/{name}/start")

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/services/{name}")

    def instances(self, name: str) -> builtins.list[dict[str, Any]]:
        return self._json("GET", f"/services/{name}/instances")

    def events(self, name: str, after: int = 0) -> builtins.list[dict[str, Any]]:
        return self._json("GET", f"/services/{name}/events", params={"after": after})

    def logs(
        self,
        name: str,
        instance: str | None = None,
        tail: int | None = None,
        offset: int | None = None,
    ) -> tuple[str, int]:
        params = {
            k: v
            for k, v in {"instance": instance, "tail": tail, "offset": offset}.items()
            if v is not None
        }
        response = self._call("GET", f"/services/{name}/logs", params=params)
        return response.text, int(response.headers.get("X-Log-Offset", "0"))

    def release(
        self, name: str, weight: int | None = None, traffic_state: str | None = None
    ) -> dict[str, Any]:
        """EAS's ReleaseService: a group member's Weight and/or TrafficState."""
        body: dict[str, Any] = {}
        if weight is not None:
            body["Weight"] = weight
        if traffic_state is not None:
            body["TrafficState"] = traffic_state
        return self._json("PUT", f"/services/{name}/release", json=body)

    # -- service groups ---------------------------------------------------------------

    def groups(self) -> builtins.list[dict[str, Any]]:
        return self._json("GET", "/groups")

    def describe_group(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/groups/{name}")

    def update_group(self, name: str, traffic_mode: str) -> dict[str, Any]:
        return self._json("PUT", f"/groups/{name}", json={"TrafficMode": traffic_mode})

    def resources(self) -> builtins.list[dict[str, Any]]:
        return self._json("GET", "/resources")
