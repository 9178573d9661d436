"""Load benchmark of ``terravl serve`` on loopback: text-search requests/s and p50/p99 latency at 1, 8 and 64
concurrent clients, against the in-process ``terravl.tasks.search`` call in the same run, then a soak that samples
the server's resident memory.

    python benchmarks/bench_server.py                         # samples index, 10 s per level, 300 s soak
    python benchmarks/bench_server.py --seconds 5 --soak 60   # quicker
    python benchmarks/bench_server.py --index out/samples.idx

One client uses the stdlib's http.client on a keep-alive connection; 8 and 64 clients use httpx's async client.
Every loop is bounded in requests and seconds and stops by itself; traffic goes to 127.0.0.1 only.
Targets (issue 9): p50 overhead of the HTTP layer ≤ 2 ms at 1 client; peak RSS flat (±10 %) across the soak.

    python benchmarks/bench_server.py --classify 300          # issue 14.1: POST /api/v1/classify throughput

``--classify N`` instead uploads a small real JPEG (../shared/data/aid_150px) N times at concurrency 4 (threads on
keep-alive ``http.client`` connections, the cheapest client) to a server
started with ``--workers 1`` and then ``--workers 2`` (``--threads`` fixed, so only the parallelism differs), and
prints requests/s of each and their ratio: with stateless encoding, 2 workers should approach 2× on ≥ 2 free cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

QUERIES = ["green farmland with fields", "a river", "a road through a forest", "buildings in a town", "a lake",
           "bare land", "a harbor with boats", "circular irrigated fields", "dense residential area", "a highway"]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_process(index: Path, n: int) -> list[float]:
    import terravl.models as m
    from terravl.index import IndexStore
    from terravl.tasks import search

    store = IndexStore(index)
    encoder = m.load(store.model)
    search(store, text="warm-up", encoder=encoder)
    times = []
    for i in range(n):
        start = time.perf_counter()
        search(store, text=QUERIES[i % len(QUERIES)], k=10, encoder=encoder)
        times.append(1000 * (time.perf_counter() - start))
    return times


def warn_if_short(elapsed: float, seconds: float, queries: int) -> None:
    """Say so on stderr when a load with every query new ran out of queries before ``seconds``: its rate is then
    timed over a shorter window than the load it is compared with."""
    if elapsed < 0.9 * seconds:
        print(f"  every query new: the {queries} queries ran out after {elapsed:.1f} s of {seconds:.0f}",
              file=sys.stderr, flush=True)


async def load(url: str, clients: int, seconds: float, max_requests: int, queries: Sequence[str] = QUERIES,
               cycle: bool = True) -> tuple[list[float], int, float]:
    """Text searches from ``clients`` concurrent clients for ``seconds`` or ``max_requests``: (latencies in ms of
    the 200s, failures, elapsed s). Client ``c`` sends ``queries[c]``, ``queries[c + clients]``, …; ``cycle=False``
    sends each query at most once (every query new to the server's cache)."""
    import httpx

    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    sent = 0

    async def client_loop(client, c):
        nonlocal failures, sent
        i = c
        while time.perf_counter() < deadline and sent < max_requests and (cycle or i < len(queries)):
            sent += 1
            start = time.perf_counter()
            response = await client.get("/api/v1/search", params={"q": queries[i % len(queries)], "k": 10})
            if response.status_code == 200:
                latencies.append(1000 * (time.perf_counter() - start))
            else:
                failures += 1
            i += clients

    limits = __import__("httpx").Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client, c) for c in range(clients)))
        elapsed = time.perf_counter() - start
    return latencies, failures, elapsed


def sequential(port: int, seconds: float, max_requests: int) -> tuple[list[float], int, float]:
    """One client on one keep-alive connection (the stdlib's http.client: the least client-side overhead), so
    the latency is the server's plus loopback's."""
    import http.client
    from urllib.parse import urlencode

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    latencies, failures, i = [], 0, 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline and i < max_requests:
        t0 = time.perf_counter()
        conn.request("GET", "/api/v1/search?" + urlencode({"q": QUERIES[i % len(QUERIES)], "k": 10}))
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            latencies.append(1000 * (time.perf_counter() - t0))
        else:
            failures += 1
        i += 1
    conn.close()
    return latencies, failures, time.perf_counter() - start


def http_layer_only(index: Path, n: int = 300) -> list[float]:
    """p50 of the HTTP layer alone: the same app (routing, validation, guard, thread-pool hop, JSON) served by
    uvicorn in a thread of this process, with the search call replaced by its cached result."""
    import threading

    import uvicorn

    import terravl.tasks as tasks
    from terravl.server import create_app

    real, cached = tasks.search, {}

    def stub(store, **kwargs):
        if "hits" not in cached:
            cached["hits"] = real(store, **kwargs)
        return cached["hits"]

    tasks.search = stub
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app([index], preload=False), host="127.0.0.1", port=port,
                                               log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        latencies, _, _ = sequential(port, 60.0, n + 20)
        server.should_exit = True
        thread.join(30)
        return latencies[20:]
    finally:
        tasks.search = real


def start_server(index: Path, log_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``terravl serve`` on a free loopback port, once /readyz answers 200."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(log_path, "w")
    server = subprocess.Popen([sys.executable, "-m", "terravl.cli.main", "serve", str(index), "--port", str(port),
                               "--log-level", "warning", *args], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        if server.poll() is not None:
            raise SystemExit("server exited; see " + log.name)
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise SystemExit("server did not start; see " + log.name)


def classify_load(url: str, image: bytes, requests: int, concurrency: int) -> tuple[list[float], int, float]:
    """``requests`` uploads of ``image`` to /api/v1/classify (built-in AID classes) from ``concurrency`` clients.

    The clients are threads on keep-alive ``http.client`` connections sending one multipart body built once: the
    load generator shares the 2 cores with the server, so it is kept as cheap as a client can be (an async httpx
    client spends several ms of CPU per upload, which the server's workers would otherwise have had)."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname, urlsplit(url).port
    boundary = "terravl-bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"classes\"\r\n\r\naid\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"scene.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    todo = iter(range(requests))

    def post(connection: http.client.HTTPConnection) -> int:
        connection.request("POST", "/api/v1/classify", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status

    def client_loop() -> None:
        nonlocal failures
        connection = http.client.HTTPConnection(host, port, timeout=300)
        try:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                start = time.perf_counter()
                status = post(connection)
                with lock:
                    if status == 200:
                        latencies.append(1000 * (time.perf_counter() - start))
                    else:
                        failures += 1
        finally:
            connection.close()

    warm = http.client.HTTPConnection(host, port, timeout=300)
    post(warm)  # warm-up: caches the label embeddings
    warm.close()
    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, failures, time.perf_counter() - start


def classify_throughput(index: Path, tmp: Path, requests: int, concurrency: int = 4,
                        worker_counts: tuple[int, ...] = (1, 2), rounds: int = 3) -> None:
    """Issue 14.1's measure: classify requests/s with ``--workers 2`` against ``--workers 1``, in ``rounds``
    back-to-back pairs (a fresh server each run); the ratio is reported per round and as the median, because runs on
    a 2-core machine that also hosts the client vary by tens of percent."""
    from terravl import config

    shared = config.shared_dir()
    images = sorted((shared / "data" / "aid_150px" / "images").rglob("*.jpg")) if shared else []
    if not images:
        raise SystemExit("needs ../shared/data/aid_150px (set TERRAVL_SHARED)")
    image = images[0].read_bytes()
    threads = max(1, (os.cpu_count() or 2) // max(worker_counts))  # the same torch threads per worker in every run
    rows, ratios = [], []
    for round_ in range(1, rounds + 1):
        rates = {}
        for workers in worker_counts:
            server, url = start_server(index, tmp / f"serve-classify-{workers}.log", "--workers", str(workers),
                                       "--threads", str(threads), "--queue", str(4 * concurrency))
            try:
                latencies, failures, elapsed = classify_load(url, image, requests, concurrency)
            finally:
                server.terminate()
                server.wait(60)
            rates[workers] = len(latencies) / elapsed
            rows.append((round_, workers, rates[workers], percentile(latencies, 50) if latencies else float("nan"),
                         percentile(latencies, 99) if latencies else float("nan"), failures,
                         rates[workers] / rates[worker_counts[0]]))
        ratios.append(rates[worker_counts[-1]] / rates[worker_counts[0]])
    print(f"\nPOST /api/v1/classify · {requests} uploads of {images[0].name} ({len(image):,} bytes) at concurrency "
          f"{concurrency} · {threads} torch thread(s) per worker · {os.cpu_count()} cores · {rounds} rounds")
    print("| round | --workers | requests/s | p50 ms | p99 ms | non-200 | × workers=1 (same round) |")
    print("|------:|----------:|-----------:|-------:|-------:|--------:|-------------------------:|")
    for round_, workers, rps, p50, p99, failures, ratio in rows:
        print(f"| {round_:5d} | {workers:9d} | {rps:10.2f} | {p50:6.0f} | {p99:6.0f} | {failures:7d} | {ratio:24.2f} |")
    print(f"\nmedian ratio --workers {worker_counts[-1]} / --workers {worker_counts[0]}: "
          f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)}; target ≥ 1.6)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="Index to serve (default: built from the shipped samples).")
    parser.add_argument("--seconds", type=float, default=10.0, help="Seconds per concurrency level.")
    parser.add_argument("--max-requests", type=int, default=20_000, help="Cap per level.")
    parser.add_argument("--soak", type=float, default=300.0, help="Soak seconds at 8 clients (0 to skip).")
    parser.add_argument("--in-process", type=int, default=300, help="In-process search calls for the baseline.")
    parser.add_argument("--workers", type=int, default=2, help="Server worker threads (terravl serve --workers).")
    parser.add_argument("--classify", type=int, default=0, metavar="N",
                        help="Only measure POST /api/v1/classify: N uploads at concurrency 4, --workers 1 vs 2.")
    parser.add_argument("--concurrency", type=int, default=4, help="Clients for --classify.")
    parser.add_argument("--rounds", type=int, default=3, help="Back-to-back --workers 1/2 pairs for --classify.")
    args = parser.parse_args()

    from terravl import config

    tmp = Path(tempfile.mkdtemp(prefix="terravl-bench-serve-"))
    index = args.index
    if index is None:
        import terravl.models as m
        from terravl.index import build_index

        index = tmp / "samples.idx"
        build_index([config.samples_dir()], m.load("terravl-default"), index)

    if args.classify:
        classify_throughput(index, tmp, args.classify, args.concurrency, rounds=args.rounds)
        return
    base = in_process(index, args.in_process)
    layer = http_layer_only(index)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "terravl.cli.main", "serve", str(index), "--port", str(port),
                               "--log-level", "warning", "--queue", "256", "--workers", str(args.workers)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("server did not start; see " + log.name)
        asyncio.run(load(url, 1, 1.0, 50))  # warm-up
        rows = []
        for clients in (1, 8, 64):
            latencies, failures, elapsed = (sequential(port, args.seconds, args.max_requests) if clients == 1 else
                                            asyncio.run(load(url, clients, args.seconds, args.max_requests)))
            rows.append((clients, len(latencies) / elapsed, percentile(latencies, 50), percentile(latencies, 99),
                         failures))
        soak = []
        if args.soak > 0:
            end = time.perf_counter() + args.soak
            while time.perf_counter() < end:
                asyncio.run(load(url, 8, min(5.0, end - time.perf_counter()), args.max_requests))
                soak.append((time.perf_counter() - (end - args.soak), rss_mib(server.pid)))
    finally:
        server.terminate()
        server.wait(60)
        log.close()

    base_p50 = statistics.median(base)
    print(f"\nindex {index} · in-process search p50 {base_p50:.2f} ms, p99 {percentile(base, 99):.2f} ms "
          f"({len(base)} calls, {os.cpu_count()} cores)")
    print("| clients | requests/s | p50 ms | p99 ms | non-200 | p50 − in-process |")
    print("|--------:|-----------:|-------:|-------:|--------:|-----------------:|")
    for clients, rps, p50, p99, failures in rows:
        print(f"| {clients:7d} | {rps:10.1f} | {p50:6.2f} | {p99:6.2f} | {failures:7d} | {p50 - base_p50:13.2f} ms |")
    print(f"HTTP layer alone (search replaced by its cached result, 1 client): p50 {statistics.median(layer):.2f} ms, "
          f"p99 {percentile(layer, 99):.2f} ms")
    if soak:
        first = max(r for t, r in soak if t <= 60) if any(t <= 60 for t, _ in soak) else soak[0][1]
        peak = max(r for _, r in soak)
        last = soak[-1][1]
        print(f"\nsoak {args.soak:.0f} s at 8 clients: RSS after the first minute {first:.1f} MiB, peak {peak:.1f} MiB, "
              f"at the end {last:.1f} MiB → peak/first-minute {peak / first:.3f} (flat within ±10 %: "
              f"{'yes' if abs(peak / first - 1) <= 0.10 else 'no'})")


if __name__ == "__main__":
    main()
