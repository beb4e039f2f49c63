"""HTTP transport of the SDK: authentication, error mapping, retries with
backoff for idempotent calls, timeouts. ``Client`` is synchronous,
``AsyncClient`` asyncio-based; both hold one connection pool."""

from __future__ import annotations

import asyncio
import atexit
import email.utils
import json
import os
import random
import ssl
import threading
import time
import urllib.request
import weakref
from typing import Any, AsyncIterator, Dict, Iterator, Mapping, Optional, Tuple, Union
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
import certifi
import httpx

from ._rawhttp import RawResponse, open_stream
from ._errors import APIConnectionError, APITimeoutError, OrkestrError, RateLimitError, classify
from ._version import __version__

__all__ = ["Client", "AsyncClient", "DEFAULT_BASE_URL"]

DEFAULT_BASE_URL = "https://api.orkestr.eu"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_BUDGET = 10.0
_BACKOFF = 0.25  # first backoff step in seconds
_IDEMPOTENT = frozenset({"GET", "PUT", "DELETE", "HEAD"})
_RETRY_STATUS = frozenset({429, 503})

Params = Optional[Mapping[str, str]]
# Raw bodies: bytes (retried like any idempotent call) or an iterator of
# bytes, streamed as it is read and never retried.
Body = Union[bytes, Iterator[bytes], AsyncIterator[bytes], None]


class _Secret:
    """Holds the API key so that no repr, str or log of anything shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # keep it out of pickles, too
        raise TypeError("orkestr: the API key cannot be pickled")


class _Config:
    def __init__(
        self,
        api_key: Optional[str],
        base_url: Optional[str],
        timeout: float,
        max_retries: int,
        retry_budget: float,
        ca_bundle: Optional[str] = None,
    ) -> None:
        key = (api_key if api_key is not None else os.environ.get("ORKESTR_API_KEY", "")).strip()
        if not key:
            raise OrkestrError(
                "no API key: set ORKESTR_API_KEY or pass api_key=...", code="no_api_key"
            )
        self.key = _Secret(key)
        self.base_url = _normalize_base_url(base_url or os.environ.get("ORKESTR_BASE_URL") or DEFAULT_BASE_URL)
        self.timeout = float(timeout)
        self.max_retries = max(int(max_retries), 0)
        self.retry_budget = max(float(retry_budget), 0.0)
        self.ca_bundle = ca_bundle if ca_bundle is not None else os.environ.get("ORKESTR_CA_BUNDLE", "")

    def verify(self) -> Union[bool, ssl.SSLContext]:
        """What httpx verifies the server with: its default roots, plus the
        CA certificates of ``ca_bundle`` (a PEM file) when one is given."""
        if not self.ca_bundle:
            return True
        ctx = ssl.create_default_context(cafile=certifi.where())
        try:
            ctx.load_verify_locations(cafile=self.ca_bundle)
        except (OSError, ssl.SSLError) as e:
            raise OrkestrError(
                f"cannot use the CA bundle {self.ca_bundle!r}: {e}", code="invalid_ca_bundle"
            ) from None
        return ctx

    def headers(self) -> Dict[str, str]:
        return {
            "Authorization": "Bearer " + self.key.get(),
            "User-Agent": f"orkestr-python/{__version__}",
            "Accept": "application/json",
        }

    def cache_key(self) -> Tuple[str, str, float, int, float, str]:
        return (self.key.get(), self.base_url, self.timeout, self.max_retries, self.retry_budget, self.ca_bundle)


def _normalize_base_url(raw: str) -> str:
    u = urlsplit(raw.strip())
    if u.scheme not in ("http", "https") or not u.hostname:
        raise OrkestrError(
            f"invalid base URL {_safe_url(raw)!r}: want http(s)://host[:port][/prefix]", code="invalid_base_url"
        )
    netloc = u.hostname if ":" not in u.hostname else f"[{u.hostname}]"
    if u.port is not None:
        netloc += f":{u.port}"
    path = u.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    # User info, query and fragment are dropped: none belongs in a base URL.
    return urlunsplit((u.scheme, netloc, path, "", ""))


def _safe_url(raw: str) -> str:
    try:
        u = urlsplit(raw)
        if u.username or u.password:
            return urlunsplit((u.scheme, "***@" + (u.hostname or ""), u.path, "", ""))
    except ValueError:
        return "<unparseable>"
    return raw[:200]


def sandbox_path(sandbox_id: str, suffix: str = "") -> str:
    if not sandbox_id:
        raise ValueError("orkestr: empty sandbox id")
    return "/sandboxes/" + quote(sandbox_id, safe="") + suffix


def _retry_after_header(headers: httpx.Headers) -> float:
    v = headers.get("retry-after-ms")
    if v is not None:
        try:
            return max(int(v) / 1000.0, 0.0)
        except ValueError:
            pass
    v = headers.get("retry-after")
    if not v:
        return 0.0
    try:
        return max(float(int(v)), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return 0.0
    return max(when.timestamp() - time.time(), 0.0)


def error_from_response(status: int, headers: httpx.Headers, raw: bytes) -> OrkestrError:
    """Turn a non-2xx answer into its exception."""
    request_id = headers.get("x-request-id")
    code, message = "", ""
    details: Dict[str, Any] = {}
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str) and err["code"]:
        code = err["code"]
        m, d = err.get("message"), err.get("details")
        message = m if isinstance(m, str) else ""
        details = d if isinstance(d, dict) else {}
    if not code:
        # Not the API's error body (a proxy, a load balancer): keep a short,
        # printable excerpt.
        message = httpx.codes.get_reason_phrase(status) or f"HTTP {status}"
        excerpt = raw[:200].decode("utf-8", "replace").strip()
        if excerpt:
            message += ": " + excerpt
    return classify(status, code, message, details, request_id, _retry_after_header(headers))


def _encode_body(headers: Dict[str, str], json_body: Any, content: Body) -> Tuple[Dict[str, str], Body]:
    """The request body and its Content-Type: JSON when json_body is given,
    else the raw bytes of content (if any)."""
    if json_body is not None:
        headers["Content-Type"] = "application/json"
        return headers, json.dumps(json_body, ensure_ascii=False).encode("utf-8")
    if content is not None:
        headers["Content-Type"] = "application/octet-stream"
    return headers, content


def _encode_request(cfg: _Config, json_body: Any, content: Body, accept: Optional[str]) -> Tuple[Dict[str, str], Body]:
    """A call's headers and body; accept, when given, is preferred over JSON."""
    headers, data = _encode_body(cfg.headers(), json_body, content)
    if accept:
        headers["Accept"] = accept + ", application/json;q=0.5"
    return headers, data


def _decode_json(resp: httpx.Response, method: str, path: str) -> Any:
    try:
        return resp.json()
    except ValueError as e:
        raise OrkestrError(
            f"{method} /v1{path}: the answer is not JSON ({e})",
            code="invalid_response",
            status=resp.status_code,
            request_id=resp.headers.get("x-request-id"),
        ) from None


def _transport_error(e: httpx.TransportError, method: str, path: str) -> OrkestrError:
    # The message names the call, never the URL's user info or the headers.
    cls = APITimeoutError if isinstance(e, httpx.TimeoutException) else APIConnectionError
    code = "timeout" if cls is APITimeoutError else "connection_error"
    return cls(f"{method} /v1{path}: {type(e).__name__}: {e}", code=code)


class _RetryPolicy:
    def __init__(self, cfg: _Config, method: str, body_rewindable: bool) -> None:
        self.enabled = method in _IDEMPOTENT and body_rewindable and cfg.max_retries > 0
        self.max_retries = cfg.max_retries
        self.deadline = time.monotonic() + cfg.retry_budget

    def wait(self, attempt: int, err: OrkestrError) -> Optional[float]:
        """Seconds to wait before retrying after err, or None to give up."""
        if not self.enabled or attempt >= self.max_retries:
            return None
        if not isinstance(err, APIConnectionError) and err.status not in _RETRY_STATUS:
            return None
        if isinstance(err, RateLimitError):
            server = err.retry_after
        else:
            server = float(getattr(err, "_retry_after_header", 0.0))
        # Full jitter on the exponential step, but never less than the
        # server's Retry-After.
        step = _BACKOFF * (2**attempt)
        w = max(server, random.uniform(0.001, step))
        if time.monotonic() + w > self.deadline:
            return None
        return w


class _BaseClient:
    _cfg: _Config

    @property
    def base_url(self) -> str:
        return self._cfg.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._cfg.base_url!r}, api_key=<redacted>)"

    __str__ = __repr__

    def _url(self, path: str) -> str:
        return self._cfg.base_url + "/v1" + path

    def _timeout(self, extra: Optional[float]) -> httpx.Timeout:
        t = self._cfg.timeout + (extra or 0.0)
        return httpx.Timeout(t, connect=min(self._cfg.timeout, 30.0))


def _attach_retry_after(err: OrkestrError, headers: httpx.Headers) -> OrkestrError:
    setattr(err, "_retry_after_header", _retry_after_header(headers))
    return err


class Client(_BaseClient):
    """A synchronous connection to one orkestr API with one API key.

    ``api_key`` defaults to ``ORKESTR_API_KEY``, ``base_url`` to
    ``ORKESTR_BASE_URL``, else https://api.orkestr.eu. ``timeout`` bounds
    each HTTP call in seconds (exec calls add their own ``timeout_seconds``).
    Idempotent calls (GET, file PUT, DELETE) are retried up to
    ``max_retries`` times after 429, 503 or a network error, honouring
    Retry-After, waiting at most ``retry_budget`` seconds in all. It is safe
    to share between threads; close it (or use it as a context manager)
    when done. ``ca_bundle`` (default ``ORKESTR_CA_BUNDLE``) is a PEM file of
    CA certificates trusted besides the default roots, for a server whose
    certificate a private CA issued.
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        http_client: Optional[httpx.Client] = None,
        ca_bundle: Optional[str] = None,
    ) -> None:
        self._cfg = _Config(api_key, base_url, timeout, max_retries, retry_budget, ca_bundle)
        self._owns_http = http_client is None
        self._verify = self._cfg.verify() if http_client is None else True
        self._http = http_client if http_client is not None else httpx.Client(verify=self._verify)

    def close(self) -> None:
        """Close the connection pool. A client that made its own pool opens
        a new one if it is used again."""
        if self._owns_http:
            self._http.close()

    def _pool(self) -> httpx.Client:
        if self._owns_http and self._http.is_closed:
            self._http = httpx.Client(verify=self._verify)
        return self._http

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        json_body: Any = None,
        content: Body = None,
        extra_timeout: Optional[float] = None,
    ) -> httpx.Response:
        """Send a call and return the 2xx answer, read in full."""
        resp = self._send(method, path, params, json_body, content, extra_timeout, stream=False)
        return resp

    def stream(
        self, method: str, path: str, *, json_body: Any = None, extra_timeout: Optional[float] = None,
        params: Params = None, accept: Optional[str] = None,
    ) -> httpx.Response:
        """Send a call and return the 2xx answer with its body still open."""
        return self._send(method, path, params, json_body, None, extra_timeout, stream=True, accept=accept)

    def stream_output(
        self, method: str, path: str, *, json_body: Any, extra_timeout: Optional[float] = None,
        accept: Optional[str] = None,
    ) -> Union[httpx.Response, RawResponse]:
        """stream() for a long output body (the exec stream; never retried):
        from an http:// API without a proxy, through an HTTP/1.1 exchange of
        its own (see _rawhttp), which costs half the CPU per byte."""
        if not (self._owns_http and self._cfg.base_url.startswith("http://") and not urllib.request.getproxies()):
            return self.stream(method, path, json_body=json_body, extra_timeout=extra_timeout, accept=accept)
        headers, data = _encode_request(self._cfg, json_body, None, accept)
        t = self._timeout(extra_timeout)
        try:
            resp = open_stream(self._url(path), method, headers, data if isinstance(data, bytes) else b"",
                               t.connect or self._cfg.timeout, t.read or self._cfg.timeout)
        except httpx.TransportError as e:
            raise _transport_error(e, method, path) from None
        if 200 <= resp.status_code < 300:
            return resp
        raw = resp.read_at_most(1 << 20)
        resp.close()
        raise _attach_retry_after(error_from_response(resp.status_code, resp.headers, raw), resp.headers)

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return _decode_json(self.request(method, path, **kw), method, path)

    def _send(
        self,
        method: str,
        path: str,
        params: Params,
        json_body: Any,
        content: Body,
        extra_timeout: Optional[float],
        stream: bool,
        accept: Optional[str] = None,
    ) -> httpx.Response:
        headers, data = _encode_request(self._cfg, json_body, content, accept)
        policy = _RetryPolicy(self._cfg, method, data is None or isinstance(data, bytes))
        attempt = 0
        while True:
            http = self._pool()
            req = http.build_request(
                method, self._url(path), params=params, content=data, headers=headers,
                timeout=self._timeout(extra_timeout),
            )
            try:
                resp = http.send(req, stream=True)
            except httpx.TransportError as e:
                err = _transport_error(e, method, path)
            else:
                if 200 <= resp.status_code < 300:
                    if not stream:
                        try:
                            resp.read()
                        except httpx.TransportError as e:
                            resp.close()
                            raise _transport_error(e, method, path) from None
                        finally:
                            resp.close()
                    return resp
                try:
                    raw = resp.read()
                except httpx.TransportError:
                    raw = b""
                finally:
                    resp.close()
                err = _attach_retry_after(error_from_response(resp.status_code, resp.headers, raw), resp.headers)
            wait = policy.wait(attempt, err)
            if wait is None:
                raise err
            time.sleep(wait)
            attempt += 1


class AsyncClient(_BaseClient):
    """The asyncio twin of :class:`Client`, with the same options."""

    def __init__(
        self,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        http_client: Optional[httpx.AsyncClient] = None,
        ca_bundle: Optional[str] = None,
    ) -> None:
        self._cfg = _Config(api_key, base_url, timeout, max_retries, retry_budget, ca_bundle)
        self._owns_http = http_client is None
        self._verify = self._cfg.verify() if http_client is None else True
        self._http = http_client if http_client is not None else httpx.AsyncClient(verify=self._verify)

    async def aclose(self) -> None:
        """Close the connection pool; as for Client.close, it reopens on use."""
        if self._owns_http:
            await self._http.aclose()

    def _pool(self) -> httpx.AsyncClient:
        if self._owns_http and self._http.is_closed:
            self._http = httpx.AsyncClient(verify=self._verify)
        return self._http

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params = None,
        json_body: Any = None,
        content: Body = None,
        extra_timeout: Optional[float] = None,
    ) -> httpx.Response:
        return await self._send(method, path, params, json_body, content, extra_timeout, stream=False)

    async def stream(
        self, method: str, path: str, *, json_body: Any = None, extra_timeout: Optional[float] = None,
        params: Params = None, accept: Optional[str] = None,
    ) -> httpx.Response:
        return await self._send(method, path, params, json_body, None, extra_timeout, stream=True, accept=accept)

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        return _decode_json(await self.request(method, path, **kw), method, path)

    async def _send(
        self,
        method: str,
        path: str,
        params: Params,
        json_body: Any,
        content: Body,
        extra_timeout: Optional[float],
        stream: bool,
        accept: Optional[str] = None,
    ) -> httpx.Response:
        headers, data = _encode_request(self._cfg, json_body, content, accept)
        policy = _RetryPolicy(self._cfg, method, data is None or isinstance(data, bytes))
        attempt = 0
        while True:
            http = self._pool()
            req = http.build_request(
                method, self._url(path), params=params, content=data, headers=headers,
                timeout=self._timeout(extra_timeout),
            )
            try:
                resp = await http.send(req, stream=True)
            except httpx.TransportError as e:
                err = _transport_error(e, method, path)
            else:
                if 200 <= resp.status_code < 300:
                    if not stream:
                        try:
                            await resp.aread()
                        except httpx.TransportError as e:
                            raise _transport_error(e, method, path) from None
                        finally:
                            await resp.aclose()
                    return resp
                try:
                    raw = await resp.aread()
                except httpx.TransportError:
                    raw = b""
                finally:
                    await resp.aclose()
                err = _attach_retry_after(error_from_response(resp.status_code, resp.headers, raw), resp.headers)
            wait = policy.wait(attempt, err)
            if wait is None:
                raise err
            await anyio.sleep(wait)
            attempt += 1


# Default clients, for calls that pass api_key/base_url instead of a client:
# one per configuration (and, for asyncio, per event loop, since a
# connection pool cannot outlive its loop). Every default client ever made
# is also in a weak set, so that closing the defaults also closes those a
# sandbox reopened after an earlier close.
_Key = Tuple[str, str, float, int, float, str]
_sync_defaults: Dict[_Key, Client] = {}
_sync_all: "weakref.WeakSet[Client]" = weakref.WeakSet()
_sync_lock = threading.Lock()
_async_defaults: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Dict[_Key, AsyncClient]]" = (
    weakref.WeakKeyDictionary()
)
_async_all: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakSet[AsyncClient]]" = (
    weakref.WeakKeyDictionary()
)


def default_client(api_key: Optional[str], base_url: Optional[str], client: Optional[Client]) -> Client:
    if client is not None:
        if api_key is not None or base_url is not None:
            raise ValueError("orkestr: pass either client= or api_key=/base_url=, not both")
        return client
    cfg = _Config(api_key, base_url, DEFAULT_TIMEOUT, DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BUDGET)
    k = cfg.cache_key()
    with _sync_lock:
        c = _sync_defaults.get(k)
        if c is None:
            c = Client(cfg.key.get(), cfg.base_url)
            _sync_defaults[k] = c
            _sync_all.add(c)
        return c


def default_async_client(
    api_key: Optional[str], base_url: Optional[str], client: Optional[AsyncClient]
) -> AsyncClient:
    if client is not None:
        if api_key is not None or base_url is not None:
            raise ValueError("orkestr: pass either client= or api_key=/base_url=, not both")
        return client
    cfg = _Config(api_key, base_url, DEFAULT_TIMEOUT, DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BUDGET)
    k = cfg.cache_key()
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return AsyncClient(cfg.key.get(), cfg.base_url)
    per_loop = _async_defaults.setdefault(loop, {})
    c = per_loop.get(k)
    if c is None:
        c = AsyncClient(cfg.key.get(), cfg.base_url)
        per_loop[k] = c
        _async_all.setdefault(loop, weakref.WeakSet()).add(c)
    return c


async def aclose_default_clients() -> None:
    """Close the default async clients of the running event loop (the ones
    made for calls without ``client=``). Call it before the loop ends, e.g.
    at the end of the coroutine given to ``asyncio.run``."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    clients = list(_async_all.get(loop, ()))  # before the cache lets go of them
    _async_defaults.pop(loop, None)
    for c in clients:
        await c.aclose()


def close_default_clients() -> None:
    """Close the default sync clients (made for calls without ``client=``)."""
    with _sync_lock:
        clients = list(_sync_all)  # before the cache lets go of them
        _sync_defaults.clear()
    for c in clients:
        c.close()


atexit.register(close_default_clients)
