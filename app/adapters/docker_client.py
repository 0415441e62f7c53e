"""The Docker engine's HTTP plumbing: one shared aiodocker client, requests with the engine's
errors translated to the ports' errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Final

import aiodocker
import aiohttp

from app.adapters.ports import AdapterError, ContainerError, ContainerNotFound, RuntimeUnavailable

_CONNECT_TIMEOUT_S: Final = 30.0


class DockerClient:
    """One Docker engine over one shared HTTP client."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        # Created on first use: aiohttp binds its connector to the running loop, and this object
        # may be built before any loop runs.
        self._docker: aiodocker.Docker | None = None
        self._closed = False

    # ------------------------------------------------------------------ plumbing
    def _client(self) -> aiodocker.Docker:
        if self._closed:
            raise RuntimeUnavailable("the Docker runtime has been closed")
        if self._docker is None:
            try:
                # No total/read timeout: waits, logs and event streams legitimately last for hours.
                self._docker = aiodocker.Docker(
                    url=self._url,
                    timeout=aiohttp.ClientTimeout(sock_connect=_CONNECT_TIMEOUT_S),
                )
            except (
                ValueError,
                AssertionError,
                aiodocker.DockerError,
            ) as exc:  # aiodocker asserts when no socket is found
                raise RuntimeUnavailable(f"cannot set up a Docker client: {exc}") from exc
        return self._docker

    @asynccontextmanager
    async def _request(
        self,
        action: str,
        path: str,
        method: str = "GET",
        *,
        params: Mapping[str, str] | None = None,
        data: object = None,
        headers: Mapping[str, str] | None = None,
        not_found: type[AdapterError] = ContainerNotFound,
        versioned_api: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        with translated(action, not_found):
            async with self._client()._query(
                path,
                method,
                params=params,
                data=data,
                headers=headers,
                versioned_api=versioned_api,
            ) as response:
                try:
                    yield response
                finally:
                    # aiodocker's _query never releases the response; an unread stream must be
                    # closed or it pins a pooled connection.
                    if response.content.at_eof():
                        response.release()
                    else:
                        response.close()

    async def _json(
        self,
        action: str,
        path: str,
        method: str = "GET",
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        not_found: type[AdapterError] = ContainerNotFound,
    ) -> object:
        data = None if body is None else json.dumps(body).encode()
        async with self._request(
            action, path, method, params=params, data=data, not_found=not_found
        ) as response:
            raw = await response.read()
        with translated(action, not_found):
            return json.loads(raw) if raw.strip() else None

    # ------------------------------------------------------------------ engine
    async def ping(self) -> None:
        async with self._request("ping the engine", "_ping", versioned_api=False) as response:
            await response.read()

    async def close(self) -> None:
        self._closed = True
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await docker.close()


# ---------------------------------------------------------------------- error translation
class Conflict(ContainerError):
    """A 409 from the engine; callers decide whether the conflict is harmless."""


class Missing(AdapterError):
    """A 404 for something that is neither a container nor an image."""


@contextmanager
def translated(action: str, not_found: type[AdapterError]) -> Iterator[None]:
    try:
        yield
    except AdapterError:
        raise
    except aiodocker.DockerError as exc:
        message = f"{action}: {exc.message}"
        if exc.status == 404:
            raise not_found(message) from exc
        if exc.status == 409:
            raise Conflict(message) from exc
        # aiodocker reports an unreachable engine as 900 and a bad context config as 0.
        if exc.status in (0, 900):
            raise RuntimeUnavailable(message) from exc
        raise ContainerError(message) from exc
    except aiohttp.ClientConnectionError as exc:
        raise RuntimeUnavailable(f"{action}: lost the connection to the engine: {exc}") from exc
    except (aiohttp.ClientError, ValueError) as exc:
        # ValueError: a body the engine sent that is not the JSON it promised.
        raise ContainerError(f"{action}: {exc}") from exc
