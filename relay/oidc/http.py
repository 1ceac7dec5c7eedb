"""Every request to the provider goes through here: one place that maps failures.

Timeouts → ProviderTimeout (504); connection failures → ProviderUnavailable (503); a 5xx or a
body that is not a JSON object → ProviderBadResponse (502). Callers decide what a 4xx means,
and ``answer_lost`` tells a failure before the request left from one after.
"""

from __future__ import annotations

from typing import Any

import httpx2

from relay.errors import ProviderBadResponse, ProviderTimeout, ProviderUnavailable

MAX_BODY = 512 * 1024  # a provider document larger than this is not one we want to parse


async def send(client: httpx2.AsyncClient, request: httpx2.Request, what: str) -> httpx2.Response:
    try:
        response = await client.send(request)
    except httpx2.TimeoutException as exc:
        raise ProviderTimeout(f"{what}.timeout", _describe(exc, request)) from exc
    except httpx2.TransportError as exc:
        raise ProviderUnavailable(f"{what}.unreachable", _describe(exc, request)) from exc
    if response.status_code >= 500:
        raise ProviderBadResponse(f"{what}.status_{response.status_code}")
    return response


def answer_lost(exc: BaseException) -> bool:
    """The request may have reached the provider and been acted on, but its answer never came
    (a read or write that timed out or failed, a connection dropped mid-exchange). Not so for
    a connection never made, nor a request that waited for one from the pool."""
    cause = exc.__cause__
    if isinstance(cause, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)):
        return False
    return isinstance(cause, httpx2.TransportError)


def _describe(exc: Exception, request: httpx2.Request) -> str:
    # The URL without its query (a userinfo or token URL carries none we send, but a
    # configured one might), and the transport's own words: "connection refused", "wrong
    # version number" for https against an http server...
    url = request.url.copy_with(query=None)
    words, depth = "", 0
    cause: BaseException | None = exc
    while cause is not None and not words and depth < 5:
        words = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else ""
        cause, depth = cause.__cause__ or cause.__context__, depth + 1
    if "SSL" in words and url.scheme == "https":
        words += " (does the server at this address speak https?)"
    return f"{type(exc).__name__} for {url}" + (f": {words}" if words else "")


def json_object(response: httpx2.Response, what: str) -> dict[str, Any]:
    if len(response.content) > MAX_BODY:
        raise ProviderBadResponse(f"{what}.too_large")
    try:
        body = response.json()
    except ValueError as exc:
        raise ProviderBadResponse(f"{what}.not_json") from exc
    except RecursionError as exc:  # arrays nested thousands deep fit easily in MAX_BODY
        raise ProviderBadResponse(f"{what}.nested_too_deep") from exc
    if not isinstance(body, dict):
        raise ProviderBadResponse(f"{what}.not_an_object")
    return body


async def get_json(client: httpx2.AsyncClient, url: str, what: str) -> dict[str, Any]:
    response = await send(client, client.build_request("GET", url), what)
    if response.status_code != 200:
        raise ProviderBadResponse(f"{what}.status_{response.status_code}")
    return json_object(response, what)
