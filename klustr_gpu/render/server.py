"""The server of ``klustr serve``: the Panel app, ``/audio/<id>`` and ``/tile.png`` on one
tornado server; the points and the audio index are loaded once and shared by every session."""
from __future__ import annotations

import logging

from ..store import Project
from .app import MapApp, pn_modules
from .data import load_map
from .mapview import view_route, warm_up
from .security import AudioHandler, AudioIndex, is_loopback
from .tiles import tile_route

log = logging.getLogger(__name__)


def audio_route(index: AudioIndex) -> tuple:
    """The tornado route of the audio handler, for ``extra_patterns``."""
    return (r"/audio/([^/]*)", AudioHandler, {"index": index})


def serve(project: Project, *, port: int = 5006, host: str = "127.0.0.1", embedding: str | None = None,
          show: bool = False) -> None:
    """Serve the app (plus ``/audio/<id>`` and ``/tile.png``); one :class:`MapApp` per session
    over shared data. Blocks."""
    _, pn = pn_modules()
    cfg = project.load_config().render
    data = load_map(project, embedding=embedding, by=cfg.by)
    index = AudioIndex.from_project(project)
    local = is_loopback(host)
    if local:
        origins = sorted({f"{h}:{port}" for h in (host, "localhost", "127.0.0.1")})
    elif host in ("0.0.0.0", "::", ""):
        log.warning("serve: listening on all interfaces (%s); anyone on the network can open the map", host)
        origins = ["*"]
    else:
        origins = [f"{host}:{port}"]
    export_root = None if local else project.path / "exports"

    def session():
        return MapApp(data, index, project=project, neighbours=cfg.neighbours, export_root=export_root).layout

    warm_up(data)                      # compile datashader's kernels now, not in the first session
    log.info("serve: %d points, %d audio files at http://%s:%d/", data.n, len(index), host, port)
    pn.serve(session, port=port, address=host, websocket_origin=origins, show=show, title="klustr_gpu map",
             extra_patterns=[audio_route(index), tile_route(data), view_route()], verbose=True)
