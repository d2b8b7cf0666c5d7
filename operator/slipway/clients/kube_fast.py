"""The alert path's Kubernetes calls, made from the event loop over one kept-warm aiohttp connection pool.

The rollback an alert triggers is three calls: read the ModelDeployment, merge-patch its status,
server-side apply the HTTPRoute. Through the kubernetes client each is a hop to a worker thread
plus the dynamic client's (de)serialisation, which on two loaded cores costs more than the
calls themselves; here they are plain JSON over HTTP from the loop, on connections opened (and
kept open) before any alert comes. Settings (server, CA, client certificate, token) come from
the operator's already-configured ``kubernetes.client.ApiClient``; the token is read per call,
so a refreshed service-account token is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from typing import Any

import aiohttp
from kubernetes import client

from .kube import FIELD_MANAGER, Manifest

log = logging.getLogger(__name__)
KEEPALIVE_SECONDS = 30.0
"""How often an idle pool is used (a cheap GET), so that the first alert after a quiet hour finds it open."""


class KubeCallFailed(RuntimeError):
    """The API server answered an error (``status`` is its HTTP status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def plural_path(api_version: str, plural: str, namespace: str, name: str) -> str:
    """The REST path of a namespaced object of a group/version (``v1`` core objects under /api)."""
    root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{root}/namespaces/{namespace}/{plural}/{name}"


def _ssl_context(cfg: client.Configuration) -> ssl.SSLContext | bool:
    if not cfg.host.startswith("https"):
        return False
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


class FastKube:
    """GET, status merge-patch and server-side apply of namespaced objects, as coroutines on the loop."""

    def __init__(self, api_client: client.ApiClient, pool: int = 4) -> None:
        self._cfg: client.Configuration = api_client.configuration
        self._host = self._cfg.host.rstrip("/")
        self._pool = pool
        self._session: aiohttp.ClientSession | None = None
        self._keepalive: asyncio.Task[None] | None = None

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        cfg = self._cfg
        if cfg.refresh_api_key_hook is not None:
            cfg.refresh_api_key_hook(cfg)
        headers = {"Accept": "application/json"}
        token = cfg.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        elif cfg.username or cfg.password:
            headers["Authorization"] = cfg.get_basic_auth_token()
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def start(self) -> None:
        """Open the pool and one connection (call on the loop the alerts arrive on)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=_ssl_context(self._cfg), limit=self._pool, keepalive_timeout=KEEPALIVE_SECONDS * 4
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10))
            self._keepalive = asyncio.create_task(self._keep_warm(), name="kube_fast keep-alive")
        await self.ping()

    async def ping(self) -> None:
        """One cheap call, which opens (or keeps) a pooled connection."""
        await self._request("GET", "/version")

    async def _keep_warm(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            with contextlib.suppress(Exception):
                await self.ping()

    async def close(self) -> None:
        """Stop the keep-alive and close the pool."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._session is not None:
            await self._session.close()
        self._session = self._keepalive = None

    async def _request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, **params: str
    ) -> tuple[int, bytes]:
        if self._session is None:
            raise RuntimeError("FastKube is not started")
        async with self._session.request(
            method, self._host + path, data=body, params=params or None, headers=self._headers(content_type)
        ) as resp:
            return resp.status, await resp.read()

    async def get(self, path: str) -> Manifest | None:
        """The object at ``path``, or None when it does not exist."""
        status, data = await self._request("GET", path)
        if status == 404:
            return None
        _raise_for(status, data)
        return dict(json.loads(data))

    async def patch_status(self, path: str, status: dict[str, Any], resource_version: str | None = None) -> None:
        """Merge-patch the status subresource (the answer is not parsed).

        With ``resource_version``, only if the object is still at that version: otherwise the API
        server answers 409 (KubeCallFailed, ``status`` 409) and nothing is written.
        """
        patch: dict[str, Any] = {"status": status}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        code, data = await self._request(
            "PATCH", f"{path}/status", json.dumps(patch).encode(), "application/merge-patch+json"
        )
        _raise_for(code, data)

    async def apply(self, path: str, manifest: Manifest) -> None:
        """Server-side apply (field manager ``slipway``, conflicts forced), like :meth:`Kube.apply`."""
        code, data = await self._request(
            "PATCH",
            path,
            json.dumps(manifest).encode(),
            "application/apply-patch+yaml",
            fieldManager=FIELD_MANAGER,
            force="true",
        )
        _raise_for(code, data)


def _raise_for(status: int, data: bytes) -> None:
    if status >= 400:
        try:
            message = str(json.loads(data).get("message", ""))
        except ValueError:
            message = data[:200].decode(errors="replace")
        raise KubeCallFailed(status, message)
