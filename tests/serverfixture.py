"""A real ``terravl serve`` process on loopback over a small index built from ../shared/data with the shipped
default model, shared by the API, hostile-input and browser tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

API_KEY = "test-key-0123456789"


def _raise_open_file_limit(wanted: int = 8192) -> None:
    """The 1,000-concurrent-requests test holds 1,000 sockets in this process and in the server; make sure a
    default soft limit of 1,024 open files does not turn that into "too many open files"."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


_raise_open_file_limit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_index(shared_data: Path, out: Path) -> Path:
    from terravl.index import build_index as build
    import terravl.models as m

    sources = [shared_data / "opengeos_timeseries_geotiff" / "naip", shared_data / "landsat7_rgb_byte_geotiff" /
               "RGB.byte.tif"] + sorted((shared_data / "aid_150px" / "images" / "Port").glob("*.jpg"))[:4]
    build(sources, m.load("terravl-default"), out, 256, 0)
    return out


class Server:
    """``terravl serve`` in a subprocess; ``url``, ``client`` (with the API key), ``stop()``."""

    def __init__(self, index: Path, *args: str, api_key: str | None = API_KEY, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        cmd = [sys.executable, "-m", "terravl.cli.main", "serve", str(index), "--port", str(self.port), *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.log = open(index.parent / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError("server did not become ready in 120 s")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()
