"""The gate in front of ``klustr serve``: which hosts, origins and routes a request may reach.

* :class:`HostPolicy`: the names a request's ``Host`` header may carry (the loopback names by
  default, plus ``--allow-host NAME``), the ``Origin`` a browser may send from (those names at
  the server's port, so ``--host 0.0.0.0`` never means every origin), and the Fetch Metadata a
  browser sends (a request made by another site's page is refused, as is framing).
* :func:`harden`: applied to the Bokeh/Panel tornado application before it serves its first
  request: the routes are cut down to a closed list (the app, its websocket, BokehJS's and
  Panel's bundled assets, the favicon, and the server's own routes), every request passes
  :class:`HostPolicy` first, every response carries :data:`SECURITY_HEADERS`, and anything
  unknown is a one-line ``text/plain`` 404.

Panel's ``/components/<module>/...`` route (it imports any installed module named in a GET),
``/metadata``, ``/autoload.js`` (embedding the app in another site's page) and Panel's index
page are not in the closed list.
"""
from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tornado import httputil
from tornado.routing import Matcher, Rule
from tornado.web import OutputTransform, RequestHandler

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY = "*"
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "same-origin",   # another site's <img>/<audio> cannot load ours
    "Referrer-Policy": "no-referrer",
}
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")               # one label of a DNS name or a dotted IPv4
_HOST = re.compile(r"\[([0-9a-f:.]{2,45})\](?::(\d{1,5}))?|([^:\[\]]{1,253})(?::(\d{1,5}))?")
# Fetch Metadata: the request's initiator. Absent (not a browser), the server's own pages, or the
# user typing the address / following a link (a top-level navigation, never a frame).
_SAME = ("same-origin", "none")


def split_host(text: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` header or a ``NAME[:PORT]`` (lower case; IPv6 bracketed,
    or bare without a port), or ``None`` when it is not a well-formed host."""
    text = (text or "").strip().lower()
    if text.count(":") > 1 and not text.startswith("["):
        text = f"[{text}]"                            # a bare IPv6 address
    m = _HOST.fullmatch(text)
    if m is None:
        return None
    v6, name = m.group(1), (m.group(3) or "").rstrip(".")
    port = m.group(2) or m.group(4)
    if port is not None and not 0 < int(port) < 65536:
        return None
    if v6 is not None:
        try:
            ipaddress.IPv6Address(v6)
        except ValueError:
            return None
        name = v6
    elif not name or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return name, (int(port) if port is not None else None)


def host_name(host: str) -> str | None:
    """The name of a ``Host`` header (see :func:`split_host`), or ``None`` when malformed."""
    parts = split_host(host)
    return None if parts is None else parts[0]


def _origin_netloc(name: str, port: int) -> str:
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


@dataclass(frozen=True)
class HostPolicy:
    """What a request must carry to be served.

    ``hosts``: the names (``NAME`` or ``NAME:PORT``, as ``--allow-host`` takes them) that
    ``Host`` may carry, besides the loopback names; ``"*"`` allows any (and any origin).
    ``port``: the server's port: a browser's ``Origin`` must be an allowed name at this port
    (or at the port given with ``NAME:PORT``, e.g. behind a proxy on 443)."""

    port: int
    hosts: tuple[str, ...] = ()
    names: frozenset[str] = field(init=False)
    origins: frozenset[str] = field(init=False)

    def __post_init__(self):
        names, origins = set(LOOPBACK_NAMES), set()
        for entry in self.hosts:
            entry = str(entry).strip().lower()
            if entry == ANY:
                names.add(ANY)
                continue
            parts = split_host(entry)
            if parts is None:
                raise ValueError(f"not a host name or address: {entry!r}")
            names.add(parts[0])
            if parts[1] is not None:
                origins.add(_origin_netloc(*parts))
        origins |= {_origin_netloc(n, self.port) for n in names if n != ANY}
        object.__setattr__(self, "names", frozenset(names))
        object.__setattr__(self, "origins", frozenset(origins))

    @property
    def any_host(self) -> bool:
        return ANY in self.names

    def websocket_origins(self) -> list[str]:
        """Bokeh's ``allow_websocket_origin`` list (``host:port`` entries) for these hosts."""
        return [ANY] if self.any_host else sorted(self.origins)

    def host_ok(self, host: str) -> bool:
        name = host_name(host)
        return name is not None and (self.any_host or name in self.names)

    def origin_ok(self, origin: str) -> bool:
        if self.any_host:
            return True
        try:
            parts = urlsplit(origin)
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            return False
        if parts.path or parts.query or parts.fragment or parts.username is not None:
            return False
        return _origin_netloc(parts.hostname.lower(), port) in self.origins

    def refusal(self, request: httputil.HTTPServerRequest) -> tuple[int, str] | None:
        """``(status, reason)`` when ``request`` must be refused, else ``None``."""
        h = request.headers
        hosts = h.get_list("Host")                   # none: an HTTP/1.0 client, not a browser
        if len(hosts) > 1 or (hosts and not self.host_ok(hosts[0])):
            return 400, "host not allowed (start the server with --allow-host NAME to serve a name)"
        origin = h.get("Origin")
        if origin is not None and (len(h.get_list("Origin")) > 1 or not self.origin_ok(origin)):
            return 403, "requests from another site's page are refused"
        site, dest = h.get("Sec-Fetch-Site"), h.get("Sec-Fetch-Dest", "")
        if dest in ("iframe", "frame", "embed", "object", "fencedframe"):
            return 403, "this server's pages cannot be framed"
        if site is not None and site not in _SAME:
            navigate = h.get("Sec-Fetch-Mode") == "navigate" and dest == "document" and request.method == "GET"
            if not navigate:
                return 403, "requests from another site's page are refused"
        return None


class _Refused(Matcher):
    def __init__(self, policy: HostPolicy):
        self.policy = policy

    def match(self, request):
        return {} if self.policy.refusal(request) is not None else None


def send_plain(handler: RequestHandler, status: int, message: str) -> None:
    """Finish ``handler`` with ``status`` and a one-line ``text/plain`` body (no markup, no
    traceback, the request never echoed)."""
    handler.clear()
    handler.set_status(status)
    handler.set_header("Content-Type", "text/plain; charset=utf-8")
    handler.set_header("Cache-Control", "no-store")
    handler.finish(f"{status} {message}\n")


class RefusedHandler(RequestHandler):
    """Answers a request :class:`HostPolicy` refuses, whatever its method or path."""

    def initialize(self, policy: HostPolicy) -> None:  # type: ignore[override]
        self.policy = policy

    def prepare(self) -> None:
        status, reason = self.policy.refusal(self.request) or (403, "refused")
        log.warning("serve: refused %s %s: %s (Host %r, Origin %r)", self.request.method,
                    self.request.path[:80], reason, self.request.host[:80],
                    (self.request.headers.get("Origin") or "")[:80])
        send_plain(self, status, reason)

    def write_error(self, status_code: int, **kwargs) -> None:
        send_plain(self, status_code, "refused")


class NotFoundHandler(RequestHandler):
    """Anything outside the closed list: a one-line 404."""

    def prepare(self) -> None:
        send_plain(self, 404, "not found")

    def write_error(self, status_code: int, **kwargs) -> None:
        send_plain(self, status_code, httputil.responses.get(status_code, "error").lower())


class SecurityHeaders(OutputTransform):
    """Adds :data:`SECURITY_HEADERS` to every response (pages, assets, audio, tiles, errors)."""

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        for name, value in SECURITY_HEADERS.items():
            headers[name] = value
        return status_code, headers, chunk


def app_handlers() -> tuple[type, ...]:
    """The Bokeh/Panel handlers the app needs: its page, its websocket, BokehJS's and Panel's
    bundled static assets, the favicon. Nothing that imports, lists or reads by request."""
    from bokeh.server.views.ico_handler import IcoHandler
    from bokeh.server.views.multi_root_static_handler import MultiRootStaticHandler
    from bokeh.server.views.static_handler import StaticHandler
    from panel.io.server import DocHandler, WSHandler

    return (DocHandler, WSHandler, StaticHandler, MultiRootStaticHandler, IcoHandler)


def harden(app, policy: HostPolicy, own: list[tuple]) -> list[str]:
    """Cut the tornado ``app`` (a ``BokehTornado``) down to the closed list: the routes of
    :func:`app_handlers` and the server's own ``own`` routes, behind ``policy``, with
    :class:`SecurityHeaders` and a plain 404 for the rest. Returns the kept route patterns."""
    allowed = set(app_handlers()) | {route[1] for route in own}
    rules = app.wildcard_router.rules
    kept = [r for r in rules if r.target in allowed]
    for r in rules:
        if r.target not in allowed:
            log.debug("serve: route %s (%s) not served", r.matcher.regex.pattern, getattr(r.target, "__name__", r.target))
    app.wildcard_router.rules = kept
    app.websocket_origins.update(policy.websocket_origins())   # Bokeh's own check: IPv6 origins too
    app.default_router.rules.insert(0, Rule(_Refused(policy), RefusedHandler, {"policy": policy}))
    app.settings["default_handler_class"] = NotFoundHandler
    app.settings["default_handler_args"] = {}
    app.settings["serve_traceback"] = False
    if SecurityHeaders not in app.transforms:
        app.transforms.append(SecurityHeaders)
    return [r.matcher.regex.pattern for r in kept]
