"""The server of ``klustr serve``: the Panel app, ``/audio/<token>`` and ``/tile.png`` on one
tornado server; the points and the audio index are loaded once and shared by every session.

It serves a closed list (:func:`.guard.harden`): the app's page and websocket, its static
assets, the favicon and the routes below; requests must carry an allowed ``Host`` (the loopback
names, plus ``allow_hosts``) and, from a browser, come from the app's own origin.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from ..errors import UsageError
from ..store import Project
from .app import MapApp, pn_modules
from .data import load_map
from .guard import HostPolicy, harden, split_host
from .mapview import view_route, warm_up
from .security import AudioHandler, AudioIndex, is_loopback, use_audio_key
from .tiles import tile_route

log = logging.getLogger(__name__)

ALL_INTERFACES = ("0.0.0.0", "::", "")
MAX_BODY_BYTES = 1 << 20          # nothing is uploaded over HTTP; the app talks over its websocket
MAX_HEADER_BYTES = 64 * 1024


def audio_route(index: AudioIndex) -> tuple:
    """The tornado route of the audio handler, for ``extra_patterns``."""
    return (r"/audio/([^/]*)", AudioHandler, {"index": index})


def host_policy(host: str, port: int, allow_hosts: Iterable[str] = ()) -> HostPolicy:
    """The :class:`~.guard.HostPolicy` of a server bound to ``host``: the loopback names, the
    bound address itself unless it is every interface, and ``allow_hosts``. A malformed name is
    a :class:`~klustr_gpu.errors.UsageError`."""
    names = list(allow_hosts)
    if host not in ALL_INTERFACES and not is_loopback(host):
        names.append(host)
    for name in names:
        if name != "*" and split_host(str(name)) is None:
            raise UsageError(f"--allow-host {name!r} is not a host name or address (NAME or NAME:PORT)")
    policy = HostPolicy(port=port, hosts=tuple(str(n) for n in names))
    if policy.any_host:
        log.warning("serve: --allow-host '*': any Host header and any page's origin are accepted")
    elif host in ALL_INTERFACES and policy.names == HostPolicy(port).names:
        log.warning("serve: listening on all interfaces (%s) but only loopback names are allowed; "
                    "add --allow-host NAME for each name or address others use to reach this machine", host)
    return policy


def serve(project: Project, *, port: int = 5006, host: str = "127.0.0.1", embedding: str | None = None,
          render=None, show: bool = False, allow_hosts: Iterable[str] = (), audio_key: bytes | None = None) -> None:
    """Serve the app (plus ``/audio/<token>`` and ``/tile.png``); one :class:`MapApp` per session
    over shared data. Blocks.

    ``allow_hosts``: names (``NAME`` or ``NAME:PORT``) the browser may use to reach the server
    besides ``localhost``, ``127.0.0.1`` and ``::1`` (and the address given as ``host``).
    ``audio_key``: the secret mixed into audio URLs (default: random at each start).
    ``render``: the ``RenderConfig`` to follow (default: the project's ``[render]`` settings)."""
    _, pn = pn_modules()
    policy = host_policy(host, port, allow_hosts)
    cfg = render if render is not None else project.load_config().render
    data = load_map(project, embedding=embedding, by=cfg.by)
    index = AudioIndex.from_project(project, key=use_audio_key(audio_key))
    if host in ALL_INTERFACES:
        log.warning("serve: listening on all interfaces (%s); anyone on the network can open the map", host)
    export_root = None if is_loopback(host) else project.path / "exports"

    def session():
        return MapApp(data, index, project=project, neighbours=cfg.neighbours, export_root=export_root).layout

    warm_up(data)                      # compile datashader's kernels now, not in the first session
    own = [audio_route(index), tile_route(data), view_route()]
    bokeh_origins = [o for o in policy.websocket_origins() if not o.startswith("[")]   # harden() adds IPv6
    server = pn.serve(session, port=port, address=host, websocket_origin=bokeh_origins, show=show,
                      title="klustr_gpu map", extra_patterns=list(own), verbose=True, start=False,
                      location=False,     # Panel's URL sync: unused, and it fails on an IPv6 Host ([::1]:port)
                      http_server_kwargs={"max_body_size": MAX_BODY_BYTES, "max_header_size": MAX_HEADER_BYTES})
    routes = harden(server._tornado, policy, own)      # Bokeh's Server keeps its tornado app there
    log.info("serve: %d points, %d audio files at http://%s:%d/ (hosts: %s; routes: %s)", data.n, len(index),
             host, port, ", ".join(sorted(policy.names)), " ".join(routes))
    server.start()
    server.io_loop.start()
