"""``terravl serve``: the HTTP API and the web map over archive indexes."""

from __future__ import annotations

import os
from pathlib import Path

import click

from terravl.cli.output import emit_json, format_option


@click.command()
@click.argument("indexes", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Loopback by default; 0.0.0.0 exposes the service to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--api-key", envvar="TERRAVL_API_KEY", default=None,
              help="Require this key on every route (X-API-Key or Authorization: Bearer; the page: open "
                   "/?api_key=KEY once). Also read from $TERRAVL_API_KEY.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Also accept requests addressed (Host header) to NAME (repeatable; '*' accepts any). The bound "
                   "address, localhost, 127.0.0.1 and ::1 are always accepted; anything else is refused (400), "
                   "which stops DNS-rebinding pages from using a local service.")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Allow cross-origin requests from this origin (repeatable). Off by default.")
@click.option("--max-upload-mb", default=32, show_default=True, type=click.IntRange(1, 2048),
              help="Largest request body.")
@click.option("--max-upload-pixels", default=40_000_000, show_default=True, type=click.IntRange(1),
              help="Largest uploaded image (width × height), checked from the header before decoding.")
@click.option("--max-windows", default=20_000, show_default=True, type=click.IntRange(1),
              help="Work budget of one /localize request: windows scored (more pixels or smaller --scales mean more "
                   "windows); beyond it the answer is 413 before any pixel is read.")
@click.option("--max-change-pixels", default=16_000_000, show_default=True, type=click.IntRange(1),
              help="Work budget of one /change or /ask-change request: pixels of the two dates' overlap (the "
                   "trained detector measures 0.25–0.65 Mpx/s on 2 cores); beyond it the answer is 413.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Threads running image-model work (classify, caption, ask, localize, search by image), in "
                   "parallel.")
@click.option("--search-workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Threads for text search, index listings and thumbnails: a pool of their own, so search stays "
                   "answered while model work saturates --workers.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="torch CPU threads per worker. Default: cores ÷ workers (at least 1), so concurrent requests do "
                   "not fight over the cores.")
@click.option("--queue", default=64, show_default=True, type=click.IntRange(0, 100_000),
              help="Requests allowed to wait for a worker (per pool); beyond that the answer is 503 with Retry-After. "
                   "/readyz reports each pool's busy, queued and saturated state.")
@click.option("--captioner", default=None, help="Captioner for /caption and /ask. Default: terravl-captioner.")
@click.option("--kb", "kbs", multiple=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Serve this knowledge base (repeatable; `terravl kb build`): POST /api/v1/ask with kb=NAME (its "
                   "file name without suffix) answers from it with citations; GET /api/v1/kb/query ranks evidence.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@format_option()
def serve(indexes, host, port, api_key, allowed_hosts, cors_origins, max_upload_mb, max_upload_pixels, max_windows,
          max_change_pixels, workers,
          search_workers, threads, queue, captioner, kbs, log_level, fmt) -> None:
    """Serve INDEXES over HTTP: a JSON API (/api/v1, OpenAPI page at /docs) and a web map at /.

    Every asset is served by this process (no CDN, no basemap: the imagery is the map). Routes read files only
    by id from the served indexes. Ctrl-C (SIGINT/SIGTERM) finishes the requests in flight, then stops.

    \b
    Examples:
      terravl serve archive.idx                       # http://127.0.0.1:8000/
      terravl serve a.idx b.idx --port 9000 --api-key "$(openssl rand -hex 16)"
      terravl serve a.idx --kb site.kb                # + answers with citations: POST /api/v1/ask kb=site
      curl 'http://127.0.0.1:8000/api/v1/search?q=a+harbor+with+boats&k=5'
    """
    import logging

    import torch
    import uvicorn

    from terravl.server import create_app
    from terravl.server.guards import allowed_hosts as host_names

    _check_listen(host, port)
    app = create_app(list(indexes), api_key=api_key or None, cors_origins=list(cors_origins) or None,
                     max_upload_bytes=max_upload_mb << 20, max_upload_pixels=max_upload_pixels, workers=workers,
                     queue=queue, captioner=captioner, light_workers=search_workers,
                     allowed_hosts=host_names(host, allowed_hosts), max_windows=max_windows,
                     max_change_pixels=max_change_pixels, kbs=list(kbs))
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // workers))
    logging.getLogger("terravl").setLevel(log_level.upper())
    access = logging.getLogger("terravl.server.access")  # one JSON object per line, nothing around it
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [handler]
    access.propagate = False
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(f"warning: serving on {host} without an API key; anyone who can reach it can use it", err=True)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if fmt == "json":  # where to find it, for scripts; request logs follow on stderr as JSON lines
        emit_json({"url": url + "/", "api": url + "/api/v1", "docs": url + "/docs",
                   "indexes": [str(p) for p in indexes], "kbs": [str(p) for p in kbs],
                   "api_key_required": bool(api_key)})
    click.echo(f"TerraVL on {url}/  (API docs: {url}/docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=30,
                server_header=False)


def _check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once, as uvicorn will, before any model loads: a port in use, an address that is not
    this machine's or a name that does not resolve is one line (exit 1), not uvicorn's log and exit after loading."""
    import socket

    from terravl.errors import TerraVLError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except (OSError, UnicodeError, TypeError, ValueError) as exc:  # TypeError: a name IDNA cannot encode
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise TerraVLError(f"cannot listen on {host}:{port} ({reason})") from None
