"""coco-caption BLEU-1..4, ROUGE-L and CIDEr-D: pycocoevalcap's reference scorers against TerraVL's fast path on
10,000 candidate captions with 5 references each, in the same run (values checked equal).

    python benchmarks/bench_caption_metrics.py [--repeats 3]

Data: the RSICD captions of ../shared/data/rsicd_aid (references: each image's 5 tokenised captions; candidate:
the first caption of another image, seeded), else synthetic sentences. Each timing is the median of --repeats runs
after one warm-up run. Target (issue 7): ≥ 10× on the three metrics together.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import numpy as np


def load_captions(n: int = 10_000) -> tuple[dict, dict]:
    from terravl import config

    rng = random.Random(0)
    shared = config.shared_dir()
    path = shared / "data" / "rsicd_aid" / "dataset_rsicd_aid.json" if shared else None
    if path and path.is_file():
        images = json.loads(path.read_text())["images"][:n]
        gts = {i["imgid"]: [" ".join(s["tokens"]) for s in i["sentences"]] for i in images}
    else:
        words = "a the many green trees buildings river road parking lot with are near some white large".split()
        gts = {i: [" ".join(rng.choices(words, k=rng.randint(6, 18))) for _ in range(5)] for i in range(n)}
    keys = list(gts)
    res = {k: [gts[rng.choice(keys)][0]] for k in keys}
    return gts, res


def timed(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from terravl.eval.caption_metrics import bleu, cider_d, prepare, rouge_l

    gts, res = load_captions()
    t_prep, stats = timed(lambda: prepare(gts, res), args.repeats)
    rows = []
    for name, ref_fn, fast_fn, pick in [
        ("BLEU-1..4", lambda: Bleu(4).compute_score(gts, res, verbose=0), lambda: bleu(stats), lambda r: r[0][3]),
        ("ROUGE-L", lambda: Rouge().compute_score(gts, res), lambda: rouge_l(stats), lambda r: r[0]),
        ("CIDEr-D", lambda: Cider().compute_score(gts, res), lambda: cider_d(stats), lambda r: r[0]),
    ]:
        t_ref, r_ref = timed(ref_fn, args.repeats)
        t_fast, r_fast = timed(fast_fn, args.repeats)
        assert abs(pick(r_ref) - pick(r_fast)) < 1e-9, (name, pick(r_ref), pick(r_fast))
        rows.append((name, t_ref, t_fast, float(pick(r_fast))))
    total_ref = sum(r[1] for r in rows)
    total_fast = t_prep + sum(r[2] for r in rows)
    print(f"\n{len(gts):,} candidates × 5 references; median of {args.repeats} runs after a warm-up\n")
    print(f"| {'metric':<28} | {'pycocoevalcap s':>15} | {'terravl s':>9} | {'speed-up':>8} | {'value':>8} |")
    print(f"|{'-' * 30}|{'-' * 17}|{'-' * 11}|{'-' * 10}|{'-' * 10}|")
    print(f"| {'shared n-gram preparation':<28} | {'':>15} | {t_prep:>9.3f} | {'':>8} | {'':>8} |")
    for name, t_ref, t_fast, value in rows:
        print(f"| {name + ' (+ preparation)':<28} | {t_ref:>15.3f} | {t_fast + t_prep:>9.3f} | "
              f"{t_ref / (t_fast + t_prep):>7.1f}× | {value:>8.4f} |")
    print(f"| {'all three together':<28} | {total_ref:>15.3f} | {total_fast:>9.3f} | "
          f"{total_ref / total_fast:>7.1f}× | {'':>8} |")
    print("\nvalues shown: BLEU-4, ROUGE-L, CIDEr-D (identical in both implementations to 1e-9)")
    assert np.isfinite(total_fast)


if __name__ == "__main__":
    main()
