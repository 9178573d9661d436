"""HTTP text search of an earlier commit's code against this working tree's, in the same run: issue 20's "≥ 2× today's
requests/s in the same benchmark run", measured against the code of that day rather than a stand-in for it.

    python benchmarks/bench_then_now.py                      # REV 7be2de9 (before issue 20's work), 3 pairs, 10 s
    python benchmarks/bench_then_now.py --rev HEAD~5 --pairs 5 --seconds 5 --format json

The earlier code is checked out into a temporary git worktree (removed afterwards) and runs in this environment
(PYTHONPATH), so it must still import with today's packages. Each code builds its own index of the quickstart's
sample rasters (`terravl index build src/terravl/samples`, 34 tiles: the index issue 20's 119.7 requests/s was
measured on) and serves it with `terravl serve` (its defaults); the servers run one at a time, in back-to-back
pairs whose order alternates, so a drift of the machine's speed falls on both. Load: 8 httpx clients
(`bench_server.load`) for ``--seconds`` each, first with every query new (distinct RSICD captions: the text tower
encodes each; every server is a fresh process with an empty cache, so all get the same list), then bench_server's
10 queries repeated (what issue 20's figure was measured with; today's server answers repeats from its query
cache). The median of the pair ratios is reported for both, with the seconds each load actually ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ROOT = HERE.parent
ISSUE_20_BASE = "7be2de9"  # the parent of issue 20's first commit: the code its 119.7 requests/s came from


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_index(src: Path, out: Path) -> None:
    """The quickstart's index, built by the code under ``src`` (its own model and format)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-m", "terravl", "index", "build", str(src / "terravl" / "samples"),
                    "--out", str(out)], check=True, env=env, cwd=src.parent, stdout=subprocess.DEVNULL)


def measure(src: Path, index: Path, logs: Path, warm: list[str], fresh: list[str], seconds: float) -> dict:
    """requests/s of one server (the code under ``src``): every query new, then 10 queries repeated."""
    from bench_server import QUERIES, load, start_server, warn_if_short

    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src)  # the server process imports this code
    try:
        proc, url = start_server(index, logs)
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous
    try:
        asyncio.run(load(url, 8, 2, 10**9, warm, cycle=False))  # warm-up: models, page cache
        latencies, failures, elapsed = asyncio.run(load(url, 8, seconds, 10**9, fresh, cycle=False))
        repeated, failures_r, elapsed_r = asyncio.run(load(url, 8, seconds, 10**9, QUERIES, cycle=True))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    warn_if_short(elapsed, seconds, len(fresh))
    return {"new_s": len(latencies) / elapsed, "new_elapsed_s": elapsed, "new_failures": failures,
            "repeated_s": len(repeated) / elapsed_r, "repeated_elapsed_s": elapsed_r,
            "repeated_failures": failures_r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default=ISSUE_20_BASE, help="the earlier commit (default: before issue 20)")
    parser.add_argument("--pairs", type=int, default=3, help="back-to-back then/now server pairs")
    parser.add_argument("--seconds", type=float, default=10.0, help="per load level")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    from bench_query import captions

    os.chdir(ROOT)  # so that `python -m terravl` never finds a package in the current folder first
    pool = captions(20_000)
    warm, fresh = pool[:200], pool[200:]  # each server is a fresh process: new to it, whoever had them before
    with tempfile.TemporaryDirectory(prefix="terravl-then-") as tmp:
        tmp = Path(tmp)
        tree = tmp / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), args.rev],
                       check=True)
        try:
            rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], check=True,
                                 capture_output=True, text=True).stdout.strip()
            code = {"then": tree / "src", "now": ROOT / "src"}
            for which, src in code.items():
                log(f"building the samples index with the code of {which}")
                build_index(src, tmp / f"{which}.idx")
            runs: dict[str, list[dict]] = {"then": [], "now": []}
            for i in range(args.pairs):
                for which in (("then", "now") if i % 2 == 0 else ("now", "then")):
                    runs[which].append(measure(code[which], tmp / f"{which}.idx", tmp / f"{which}.log", warm,
                                               fresh, args.seconds))
                    log(f"{which}: {runs[which][-1]}")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)
    result = {"rev": rev, "pairs": args.pairs, "seconds": args.seconds, "runs": runs}
    for key in ("new", "repeated"):
        rate = f"{key}_s"
        ratios = [now[rate] / then[rate] for then, now in zip(runs["then"], runs["now"])]
        result[rate] = {"then": statistics.median(r[rate] for r in runs["then"]),
                        "now": statistics.median(r[rate] for r in runs["now"]),
                        "pair_ratios": ratios, "median_ratio": statistics.median(ratios),
                        "seconds": [round(r[f"{key}_elapsed_s"], 1) for r in runs["then"] + runs["now"]],
                        "failures": sum(r[f"{key}_failures"] for r in runs["then"] + runs["now"])}
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return
    print(f"\nterravl serve, samples index (34 tiles), 8 clients: code of {rev} (then) against this working tree "
          f"(now), {args.pairs} back-to-back pairs of {args.seconds:.0f} s per level")
    print("| load | then req/s | now req/s | pair ratios | median ratio | seconds run | failures |")
    print("|---|---|---|---|---|---|---|")
    for key, what in (("new_s", "every query new"), ("repeated_s", "bench_server's 10 queries repeated")):
        r = result[key]
        print(f"| {what} | {r['then']:.1f} | {r['now']:.1f} | {', '.join(f'{x:.2f}' for x in r['pair_ratios'])} | "
              f"{r['median_ratio']:.2f}× | {min(r['seconds']):.1f}–{max(r['seconds']):.1f} | {r['failures']} |")


if __name__ == "__main__":
    main()
