"""``terravl mcp``: the archive indexes and every question-answering capability as Model Context Protocol tools."""

from __future__ import annotations

import os
from pathlib import Path

import click

from terravl.cli.output import emit_json, format_option

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command()
@click.option("--index", "indexes", multiple=True, required=True, metavar="IDX",
              type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="An index to serve (repeatable); built with `terravl index build`.")
@click.option("--kb", "kbs", multiple=True, metavar="KB",
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Serve this knowledge base (repeatable; `terravl kb build`): adds the kb_query and ask_kb tools, "
                   "which name it by its file name without suffix (never a path), and the terravl://kbs resource.")
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True,
              help="stdio: the client starts this command and talks over its stdin/stdout. http: a streamable "
                   "HTTP endpoint at http://HOST:PORT/mcp.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="With --transport http: address to bind. 0.0.0.0 exposes it to the network (use --api-key).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              help="With --transport http: port to listen on.")
@click.option("--api-key", envvar="TERRAVL_API_KEY", default=None,
              help="With --transport http: require this key (X-API-Key or Authorization: Bearer). Also read from "
                   "$TERRAVL_API_KEY.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="With --transport http: also accept requests addressed (Host header) to NAME (repeatable).")
@click.option("--max-upload-mb", default=32, show_default=True, type=click.IntRange(1, 2048),
              help="Largest image a tool accepts as data (before base64).")
@click.option("--max-upload-pixels", default=40_000_000, show_default=True, type=click.IntRange(1),
              help="Largest image (width × height), checked from its header before decoding.")
@click.option("--max-windows", default=20_000, show_default=True, type=click.IntRange(1),
              help="Work budget of one localize call, in windows scored.")
@click.option("--max-change-pixels", default=16_000_000, show_default=True, type=click.IntRange(1),
              help="Work budget of one change or ask_change call: pixels of the two dates' overlap.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Threads running image-model work in parallel.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="torch CPU threads per worker. Default: cores ÷ workers (at least 1).")
@click.option("--captioner", default=None, help="Captioner for caption, ask and change. Default: terravl-captioner.")
@format_option()
def mcp(indexes, kbs, transport, host, port, api_key, allowed_hosts, max_upload_mb, max_upload_pixels, max_windows,
        max_change_pixels, workers, threads, captioner, fmt) -> None:
    """Serve indexes to AI assistants over MCP, the Model Context Protocol.

    MCP is the open standard by which AI assistants (Claude Desktop, IDE agents, …) discover and call a
    program's tools. This makes TerraVL's capabilities tools: search (by text or example image), classify,
    caption, ask, localize, change and ask_change; with --kb, kb_query (ranked evidence) and ask_kb (answers with
    numbered citations); and resources (terravl://indexes, terravl://kbs, and each hit's tile). Tools read only
    the indexes and knowledge bases given here and images sent as base64 data, never a path; the HTTP API's
    limits apply (--max-upload-mb, --max-upload-pixels, formats JPEG/PNG/GeoTIFF/WebP).

    \b
    Register it with a client: Claude Desktop's claude_desktop_config.json, or any client's "mcpServers" block:
      {"mcpServers": {"terravl": {
          "command": "/path/to/.venv/bin/terravl",
          "args": ["mcp", "--index", "/data/archive.idx"]}}}

    \b
    Examples:
      terravl mcp --index archive.idx                                  # stdio: the client starts it
      terravl mcp --index a.idx --index b.idx --transport http --port 8000   # http://127.0.0.1:8000/mcp
      terravl mcp --index archive.idx --kb site.kb                     # + kb_query and ask_kb (kb="site")
    """
    if transport == "stdio" and fmt == "json":
        raise click.UsageError("--format json needs --transport http: over stdio, stdout carries the protocol")
    import torch

    from terravl.mcp import build_server, run_http, run_stdio
    from terravl.server.service import Service

    if transport == "http":
        from terravl.cli.serve_cmd import _check_listen

        _check_listen(host, port)
    service = Service(list(indexes), captioner, workers, max_upload_pixels=max_upload_pixels, light_workers=2,
                      max_windows=max_windows, max_change_pixels=max_change_pixels, kbs=list(kbs))
    try:
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // workers))
        server = build_server(service, max_upload_mb << 20)
        server.start_loading()
        served = ", ".join([*service.paths, *(f"knowledge base {n}" for n in service.kb_paths)])
        if transport == "stdio":
            click.echo(f"TerraVL MCP server on stdio, serving {served}", err=True)
            _exit_on_sigterm(service.tmp)
            run_stdio(server)
            return
        from terravl.server.guards import allowed_hosts as host_names

        if host not in LOOPBACK and not api_key:
            click.echo(f"warning: serving on {host} without an API key; anyone who can reach it can use it",
                       err=True)
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/mcp"
        if fmt == "json":
            emit_json({"url": url, "transport": "streamable-http", "indexes": list(service.paths),
                       "kbs": list(service.kb_paths),
                       "api_key_required": bool(api_key)})
        click.echo(f"TerraVL MCP server on {url}, serving {served}", err=True)
        run_http(server, host, port, api_key=api_key or None, allowed_hosts=host_names(host, allowed_hosts))
    finally:
        service.close()


def _exit_on_sigterm(tmp: Path) -> None:
    """A client stops a stdio server by closing its stdin, then SIGTERM two seconds later: exit at once then,
    deleting the temporary folder, rather than wait for a model call in progress to end."""
    import shutil
    import signal

    def stop(*_) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
