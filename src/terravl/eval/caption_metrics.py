"""Caption metrics exactly as coco-caption (pycocoevalcap) computes them, through a vectorised fast path.

``gts`` maps an image id to its tokenised reference sentences and ``res`` to a one-element list holding the
candidate, as in coco-caption. :func:`prepare` turns both into flat integer arrays once — every n-gram occurrence
(n = 1..4) keyed by (image, n-gram) and sorted a single time — and :func:`bleu`, :func:`rouge_l` and
:func:`cider_d` read their statistics from those arrays. They reproduce pycocoevalcap's numbers, including BLEU's
"closest" reference length and 1e-9/1e-15 smoothing, ROUGE-L's β = 1.2 with ``split(" ")`` tokens, and CIDEr-D's
clipping, σ = 6 Gaussian length penalty (on bigram counts, as the reference does) and document frequencies from
the evaluated set's references, to floating-point rounding; the parity tests compare them to 1e-9.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from itertools import chain
from typing import Mapping, Sequence

import numpy as np

Captions = Mapping[object, Sequence[str]]
N = 4


@dataclass
class CaptionStats:
    """Everything the three metrics need, computed once for a (gts, res) pair."""

    ids: list
    n_img: int
    ref_img: np.ndarray          # image index of each reference sentence
    cand_len: np.ndarray         # tokens per candidate (str.split)
    ref_len: np.ndarray          # tokens per reference
    g_img: np.ndarray            # per (image, n-gram) group: image index
    g_order: np.ndarray          # n of the group's n-gram (1..4)
    g_cand: np.ndarray           # count in the image's candidate
    g_code: np.ndarray           # the n-gram's code (same n-gram, same code, across images)
    r_group: np.ndarray          # per (group, reference) run: group index
    r_ref: np.ndarray            # reference sentence index
    r_count: np.ndarray          # count of the n-gram in that reference
    rouge_ids: tuple             # (flat token ids, lengths) of all sentences as ROUGE-L splits them


def _check(gts: Captions, res: Captions) -> list:
    if set(gts) != set(res):
        missing, extra = set(gts) - set(res), set(res) - set(gts)
        raise ValueError(f"references and candidates must cover the same images ({len(missing)} without a "
                         f"candidate, {len(extra)} without references)")
    ids = list(gts)
    for i in ids:
        if len(res[i]) != 1:
            raise ValueError(f"image {i!r}: exactly one candidate caption expected, got {len(res[i])}")
        if len(gts[i]) < 1:
            raise ValueError(f"image {i!r}: no reference captions")
    return ids


def prepare(gts: Captions, res: Captions) -> CaptionStats:
    """Tokenise (whitespace), code every n-gram occurrence and group them by (image, n-gram) with one sort.

    Each occurrence becomes one integer: (image, n-gram code, sentence slot) packed into an int64, where slot 0 is
    the candidate and 1..k the image's references. After one ``np.sort`` equal n-grams of an image are adjacent,
    candidate first, then reference by reference.
    """
    ids = _check(gts, res)
    cands = [res[i][0] for i in ids]
    refs = [r for i in ids for r in gts[i]]
    n_img, n_sent = len(ids), len(ids) + len(refs)
    refs_per_img = np.array([len(gts[i]) for i in ids], dtype=np.int64)
    ref_img = np.repeat(np.arange(n_img), refs_per_img)
    first_ref = np.cumsum(refs_per_img) - refs_per_img
    with _gc_paused():
        split = list(map(str.split, chain(cands, refs)))
        lengths = np.fromiter(map(len, split), dtype=np.int64, count=n_sent)
        tokens = list(chain.from_iterable(split))
        vocab = {tok: k + 1 for k, tok in enumerate(dict.fromkeys(tokens))}
        flat = np.fromiter(map(vocab.__getitem__, tokens), dtype=np.int64, count=len(tokens))
    sent_img = np.concatenate([np.arange(n_img), ref_img])
    sent_slot = np.concatenate([np.zeros(n_img, dtype=np.int64), np.arange(len(refs)) - first_ref[ref_img] + 1])
    sent_of_tok = np.repeat(np.arange(n_sent), lengths)
    remaining = np.repeat(np.cumsum(lengths), lengths) - np.arange(flat.size)  # tokens left from each position
    base = len(vocab) + 1
    codes, sents = [], []
    for k in range(1, N + 1):
        start = np.flatnonzero(remaining >= k)
        code = flat[start]
        for j in range(1, k):
            code = code * base + flat[start + j]
        codes.append(code)
        sents.append(sent_of_tok[start])
    code, sent = np.concatenate(codes), np.concatenate(sents)
    # k-gram codes lie in [base^(k-1), base^k): orders never collide, and the order is read back from the code
    bounds = np.array([base ** k for k in range(1, N)], dtype=np.int64)
    span = base ** N
    slot_bits = int(refs_per_img.max(initial=1)).bit_length()
    if n_img * span * (1 << slot_bits) > 2 ** 63 - 1:  # large vocabularies: number the n-grams densely first
        uniq, code = np.unique(code, return_inverse=True)
        bounds = np.searchsorted(uniq, bounds)
        span = max(int(uniq.size), 1)
    key = ((sent_img[sent] * span + code) << slot_bits) | sent_slot[sent]
    key.sort()
    run_first = _changes(key)
    run_key = key[run_first]
    run_count = np.diff(np.append(run_first, key.size))
    group_of_run = run_key >> slot_bits
    new_group = _changes(group_of_run, as_mask=True)
    run_group = np.cumsum(new_group, dtype=np.int64) - 1
    group_key = group_of_run[new_group]
    run_slot = run_key & ((1 << slot_bits) - 1)
    is_cand = run_slot == 0
    g_cand = np.zeros(group_key.size, dtype=np.int64)
    g_cand[run_group[is_cand]] = run_count[is_cand]
    g_img, g_code = np.divmod(group_key, span)
    g_order = (np.searchsorted(bounds, g_code, side="right") + 1).astype(np.int8)
    ref_runs = ~is_cand
    r_ref = first_ref[g_img[run_group[ref_runs]]] + run_slot[ref_runs] - 1
    return CaptionStats(ids, n_img, ref_img, lengths[:n_img], lengths[n_img:], g_img, g_order, g_cand, g_code,
                        run_group[ref_runs], r_ref, run_count[ref_runs],
                        _rouge_tokens(cands, refs, split, flat, lengths))


def _changes(values: np.ndarray, as_mask: bool = False) -> np.ndarray:
    """Positions (or a mask) where a sorted array starts a new value."""
    mask = np.empty(values.size, dtype=bool)
    if values.size:
        mask[0] = True
        np.not_equal(values[1:], values[:-1], out=mask[1:])
    return mask if as_mask else np.flatnonzero(mask)


class _gc_paused:
    """Creating ~1M small lists and strings triggers the cyclic collector over and over; none of them form cycles."""

    def __enter__(self):
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.was_enabled:
            gc.enable()


def _rouge_tokens(cands: list[str], refs: list[str], split: list[list[str]], flat: np.ndarray,
                  lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and lengths as ROUGE-L sees them (``split(" ")``). They equal the whitespace split unless a
    sentence is empty or has leading, trailing, repeated or non-space whitespace; only those are re-tokenised."""
    sentences = list(chain(cands, refs))
    odd = [i for i, (sentence, tokens) in enumerate(zip(sentences, split)) if " ".join(tokens) != sentence or not tokens]
    if not odd:
        return flat, lengths
    ends = np.cumsum(lengths)
    starts = ends - lengths
    lengths = lengths.copy()
    pieces, done, extra = [], 0, {}
    for i in odd:
        pieces.append(flat[done:starts[i]])
        known = dict(zip(split[i], flat[starts[i]:ends[i]].tolist()))
        tokens = sentences[i].split(" ")
        pieces.append(np.array([known[t] if t in known else -3 - extra.setdefault(t, len(extra)) for t in tokens],
                               dtype=np.int64))
        lengths[i] = len(tokens)
        done = ends[i]
    pieces.append(flat[done:])
    return np.concatenate(pieces), lengths


def bleu(stats: CaptionStats) -> tuple[list[float], list[np.ndarray]]:
    """Corpus BLEU-1..4 and per-image BLEU, as pycocoevalcap's ``Bleu(4).compute_score``."""
    refmax = np.zeros(stats.g_cand.size, dtype=np.int64)
    np.maximum.at(refmax, stats.r_group, stats.r_count)
    clipped = np.minimum(stats.g_cand, refmax)
    correct = np.bincount(stats.g_img * N + (stats.g_order - 1), weights=clipped,
                          minlength=stats.n_img * N).reshape(stats.n_img, N)
    testlen = stats.cand_len.astype(np.float64)
    guess = np.maximum(0, testlen[:, None] - np.arange(N)[None, :])
    reflen = _closest_reflen(stats)
    small, tiny = 1e-9, 1e-15
    per_image = np.cumprod((correct + tiny) / (guess + small), axis=1) ** (1.0 / np.arange(1, N + 1))[None, :]
    ratio = (testlen + tiny) / (reflen + small)
    short = ratio < 1
    per_image[short] *= np.exp(1 - 1 / ratio[short])[:, None]
    total_correct, total_guess = correct.sum(axis=0), guess.sum(axis=0)
    scores, value = [], 1.0
    for k in range(N):
        value *= float(total_correct[k] + tiny) / (total_guess[k] + small)
        scores.append(value ** (1.0 / (k + 1)))
    ratio_all = (float(testlen.sum()) + tiny) / (float(reflen.sum()) + small)
    if ratio_all < 1:
        scores = [s * math.exp(1 - 1 / ratio_all) for s in scores]
    return scores, [per_image[:, k] for k in range(N)]


def _closest_reflen(stats: CaptionStats) -> np.ndarray:
    """BleuScorer's reference length: the closest to the candidate's (ties → shorter); the mean for one image."""
    if stats.n_img == 1:
        return np.array([stats.ref_len.mean()], dtype=np.float64)
    width = int(stats.ref_len.max()) + 1
    key = np.abs(stats.ref_len - stats.cand_len[stats.ref_img]) * width + stats.ref_len
    best = np.full(stats.n_img, np.iinfo(np.int64).max)
    np.minimum.at(best, stats.ref_img, key)
    return (best % width).astype(np.float64)


def cider_d(stats: CaptionStats, sigma: float = 6.0) -> tuple[float, np.ndarray]:
    """CIDEr-D as pycocoevalcap's ``Cider``: tf-idf n-gram vectors, clipped dot products, length penalty, ×10."""
    has_ref = np.zeros(stats.g_cand.size, dtype=bool)
    has_ref[stats.r_group] = True
    ref_codes, df_counts = np.unique(stats.g_code[has_ref], return_counts=True)  # images per n-gram
    pos = np.searchsorted(ref_codes, stats.g_code).clip(max=max(ref_codes.size - 1, 0))
    df = np.zeros(stats.g_code.size)
    if ref_codes.size:
        found = ref_codes[pos] == stats.g_code
        df[found] = df_counts[pos[found]]
    weight = np.log(float(stats.n_img)) - np.log(np.maximum(1.0, df))
    n_ref = stats.ref_len.size
    cvec = stats.g_cand * weight
    cnorm = np.sqrt(np.bincount(stats.g_img * N + stats.g_order - 1, weights=cvec ** 2,
                                minlength=stats.n_img * N)).reshape(stats.n_img, N)
    rvec = stats.r_count * weight[stats.r_group]
    r_slot = stats.r_ref * N + stats.g_order[stats.r_group] - 1
    rnorm = np.sqrt(np.bincount(r_slot, weights=rvec ** 2, minlength=n_ref * N)).reshape(n_ref, N)
    dot = np.bincount(r_slot, weights=np.minimum(cvec[stats.r_group], rvec) * rvec,
                      minlength=n_ref * N).reshape(n_ref, N)
    denom = cnorm[stats.ref_img] * rnorm
    nz = denom != 0
    dot[nz] /= denom[nz]
    clen = np.maximum(stats.cand_len - 1, 0).astype(np.float64)  # the reference's "length" counts bigrams
    rlen = np.maximum(stats.ref_len - 1, 0).astype(np.float64)
    delta = clen[stats.ref_img] - rlen
    dot *= (np.e ** (-(delta ** 2) / (2 * sigma ** 2)))[:, None]
    summed = np.stack([np.bincount(stats.ref_img, weights=dot[:, k], minlength=stats.n_img) for k in range(N)], 1)
    scores = summed.mean(axis=1) / np.bincount(stats.ref_img, minlength=stats.n_img) * 10.0
    return float(np.mean(scores)), scores


def rouge_l(stats: CaptionStats, beta: float = 1.2) -> tuple[float, np.ndarray]:
    """Mean ROUGE-L F-score (best precision and recall over an image's references), as pycocoevalcap's ``Rouge``."""
    flat, lengths = stats.rouge_ids
    offsets = np.cumsum(lengths) - lengths
    n_img = stats.n_img
    cand_len = lengths[:n_img].astype(np.float64)
    ref_len = lengths[n_img:].astype(np.float64)
    pair_c = stats.ref_img
    lcs = np.zeros(ref_len.size)
    # bucket pairs by length so DP tables are not padded to the longest sentence of the whole set
    order = np.argsort(np.maximum(cand_len[pair_c], ref_len), kind="stable")
    for chunk in np.array_split(order, max(1, order.size // 4096)):
        a = _rows(flat, offsets[pair_c[chunk]], lengths[pair_c[chunk]], -1)
        b = _rows(flat, offsets[n_img + chunk], lengths[n_img + chunk], -2)
        lcs[chunk] = _lcs_lengths(a, b)
    prec = lcs / cand_len[pair_c]
    rec = lcs / ref_len
    starts = np.flatnonzero(np.r_[True, pair_c[1:] != pair_c[:-1]])
    prec_max, rec_max = np.maximum.reduceat(prec, starts), np.maximum.reduceat(rec, starts)
    ok = (prec_max != 0) & (rec_max != 0)
    scores = np.zeros(n_img)
    scores[ok] = ((1 + beta ** 2) * prec_max[ok] * rec_max[ok]) / (rec_max[ok] + beta ** 2 * prec_max[ok])
    return float(np.mean(scores)), scores


def _rows(flat: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, fill: int) -> np.ndarray:
    """Sentences as rows of a padded id matrix (``fill`` pads, and never equals a token id)."""
    width = max(int(lengths.max(initial=0)), 1)
    cols = np.arange(width)[None, :]
    mask = cols < lengths[:, None]
    out = np.full((lengths.size, width), fill, dtype=np.int64)
    out[mask] = flat[(offsets[:, None] + cols)[mask]]
    return out


def _lcs_lengths(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Longest-common-subsequence length of each row pair (a[p], b[p]); padding ids never match.

    One DP row per token of ``a`` for all pairs at once: cur[j] = max(prev[j-1] + match, prev[j], cur[j-1]),
    i.e. the running maximum along j of max(prev[j-1] + match, prev[j])."""
    pairs, width = b.shape
    prev = np.zeros((pairs, width + 1), dtype=np.int16)
    cur = np.zeros_like(prev)
    for i in range(a.shape[1]):
        step = np.maximum(prev[:, :-1] + (a[:, i:i + 1] == b), prev[:, 1:])
        np.maximum.accumulate(step, axis=1, out=cur[:, 1:])
        prev, cur = cur, prev
    return prev[:, -1].astype(np.float64)


def fast_scores(gts: Captions, res: Captions) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D (coco-caption keys) from one shared preparation."""
    stats = prepare(gts, res)
    b, _ = bleu(stats)
    return {"Bleu_1": b[0], "Bleu_2": b[1], "Bleu_3": b[2], "Bleu_4": b[3], "ROUGE_L": rouge_l(stats)[0],
            "CIDEr": cider_d(stats)[0]}
