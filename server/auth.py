"""Token checks (constant time) and the browser ``Origin`` check.

A token is presented as ``Authorization: Bearer <token>``; websockets may instead pass it
as the ``token`` query parameter (browsers cannot set headers on websockets). Without a
configured token the server is open (it then listens on localhost only, unless
``--insecure``). Reads need the token only with ``protect_reads``.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, status
from starlette.requests import HTTPConnection

from curvscope.server.params import app_settings

__all__ = [
    "bearer_token",
    "origin_allowed",
    "presented_token",
    "require_read",
    "require_write",
    "token_matches",
]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else ``None``."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def token_matches(expected: str | None, presented: str | None) -> bool:
    """Whether ``presented`` is the configured token (always ``True`` when none is set).

    Compared with :func:`hmac.compare_digest`, so the time taken does not reveal how many
    leading characters were right.
    """
    if expected is None:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def presented_token(conn: HTTPConnection, *, allow_query: bool) -> str | None:
    """The token a client presented: the Bearer header, else (if allowed) ``?token=``."""
    token = bearer_token(conn.headers.get("authorization"))
    if token is None and allow_query:
        token = conn.query_params.get("token")
    return token


def _require(request: Request) -> None:
    if not token_matches(
        app_settings(request).token_value(), presented_token(request, allow_query=False)
    ):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="a valid token is required: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_write(request: Request) -> None:
    """FastAPI dependency: writes (DELETE) need the token whenever one is configured."""
    _require(request)


def require_read(request: Request) -> None:
    """FastAPI dependency: reads need the token only when reads are protected."""
    if app_settings(request).protect_reads:
        _require(request)


def _origin_of(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return (scheme, parts.hostname.lower(), port if port is not None else default)


def origin_allowed(conn: HTTPConnection) -> bool:
    """Whether a websocket's ``Origin`` is acceptable (cross-site websocket hijacking guard).

    No ``Origin`` header: allowed (not a browser: probes, scripts). Otherwise the origin must
    be one of ``allowed_origins``, or name a trusted host (:meth:`Settings.trusted_hosts`:
    never the request's own ``Host`` alone, which a rebound DNS name controls) with the
    scheme and port the page was served from.
    """
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    parsed = _origin_of(origin)
    if parsed is None:
        return False
    settings = app_settings(conn)
    allowed = {_origin_of(o) for o in settings.allowed_origins}
    if parsed in allowed:
        return True
    trusted = settings.trusted_hosts()
    if "*" not in trusted and not any(
        parsed[1] == t.strip("[]") or (t.startswith("*.") and parsed[1].endswith(t[1:]))
        for t in trusted
    ):
        return False
    host = conn.headers.get("host")
    if not host:
        return False
    scheme = "https" if conn.url.scheme in ("https", "wss") else "http"
    return parsed == _origin_of(f"{scheme}://{host}")
