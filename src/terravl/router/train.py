"""``terravl train router``: generate instructions, embed them with the encoder's text tower once, fit the linear
classifier (softmax regression, Adam) and write the model folder. The whole recipe is the YAML config; on one CPU
thread it takes a few minutes, most of it the text embedding."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from terravl.router.templates import LABELS, generate


@dataclass
class RouterTrainConfig:
    out: str = "runs/terravl-router"
    name: str = "terravl-router"
    encoder: str = "terravl-default"
    examples: int = 6000                  # generated training instructions
    dev_examples: int = 600               # generated with another seed, for the scores in training.json
    seed: int = 0
    typo: float = 0.25                    # share of instructions with a misspelt request word
    class_weights: dict = field(default_factory=dict)   # relative frequency of each class (default equal)
    hash_dim: int = 8192
    char_ngrams: list[int] = field(default_factory=lambda: [2, 5])
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.02
    weight_decay: float = 0.0
    l2: float = 1e-5                      # penalty on the weights (per example)
    min_confidence: float = 0.0           # below this, an instruction is answered as unknown
    threads: int | None = 1
    device: str = "cpu"

    @classmethod
    def from_dict(cls, values: dict) -> "RouterTrainConfig":
        from terravl.train.settings import settings_from_dict

        return settings_from_dict(cls, values)


def _ngram_batch(texts: list[str], dim: int, chars: tuple[int, int]):
    """Flat ids, offsets and per-id weights (1/sqrt(n) per text) for ``torch.nn.EmbeddingBag``."""
    import torch

    from terravl.router.model import ngram_ids

    ids, offsets, weights = [], [], []
    for text in texts:
        found = ngram_ids(text, dim, chars)
        offsets.append(len(ids))
        ids.extend(found)
        weights.extend([1.0 / np.sqrt(max(len(found), 1))] * len(found))
    return (torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long),
            torch.tensor(weights, dtype=torch.float32))


def train(cfg: RouterTrainConfig, encoder=None, log: Callable[[str], None] = print) -> dict:
    """Train and write ``cfg.out/model``; returns the run's summary (dev scores, sizes, seconds)."""
    import torch

    from terravl.errors import InputError
    from terravl.router.evaluate import score_examples
    from terravl.router.model import Router

    if cfg.examples < len(LABELS) or cfg.dev_examples < 0:
        raise InputError("examples", f"need at least {len(LABELS)} training examples, got {cfg.examples}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    chars = (int(cfg.char_ngrams[0]), int(cfg.char_ngrams[1]))
    train_set = generate(cfg.examples, seed=cfg.seed, typo=cfg.typo, weights=cfg.class_weights)
    seen = {e.text.lower() for e in train_set}
    dev_set = [e for e in generate(cfg.dev_examples, seed=cfg.seed + 7919, typo=cfg.typo,
                                   weights=cfg.class_weights) if e.text.lower() not in seen]
    log(f"generated {len(train_set)} training and {len(dev_set)} dev instructions "
        f"({dict(Counter(e.label for e in train_set))})")
    if encoder is None:
        import terravl.models as m

        encoder = m.load(cfg.encoder, device="cpu")
    t0 = time.perf_counter()
    texts = [e.text for e in train_set]
    emb = encoder.encode_texts(texts)
    dev_emb = encoder.encode_texts([e.text for e in dev_set]) if dev_set else None
    embed_seconds = time.perf_counter() - t0
    log(f"embedded {len(texts) + len(dev_set)} instructions in {embed_seconds:.1f} s")

    y = torch.tensor([LABELS.index(e.label) for e in train_set])
    x_emb = torch.from_numpy(emb)
    n_labels, dim = len(LABELS), x_emb.shape[1]
    embed = torch.nn.Linear(dim, n_labels)
    ngram = torch.nn.EmbeddingBag(cfg.hash_dim, n_labels, mode="sum")
    torch.nn.init.zeros_(ngram.weight)
    params = list(embed.parameters()) + list(ngram.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    bags = [_ngram_batch([t], cfg.hash_dim, chars) for t in texts]
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(texts))
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            ids = torch.cat([bags[i][0] for i in idx])
            lens = torch.tensor([len(bags[i][0]) for i in idx])
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)[:-1]])
            weights = torch.cat([bags[i][2] for i in idx])
            logits = embed(x_emb[idx]) + ngram(ids, offsets, per_sample_weights=weights)
            loss = torch.nn.functional.cross_entropy(logits, y[idx])
            loss = loss + cfg.l2 * (embed.weight.pow(2).sum() + ngram.weight.pow(2).sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if epoch % 10 == 9 or epoch == cfg.epochs - 1:
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {total / len(texts):.4f}")
    train_seconds = time.perf_counter() - t0 - embed_seconds

    settings = {"kind": "router", "name": cfg.name, "encoder": getattr(encoder, "source", None) or cfg.encoder,
                "labels": list(LABELS), "hash_dim": cfg.hash_dim, "char_ngrams": list(chars),
                "min_confidence": cfg.min_confidence, "embed_dim": dim}
    router = Router(settings, {"embed.weight": embed.weight.detach().numpy().astype(np.float32),
                               "ngram.weight": ngram.weight.detach().numpy().astype(np.float32),
                               "bias": embed.bias.detach().numpy().astype(np.float32)}, encoder)
    dev = score_examples(router, [e.to_dict() for e in dev_set], dev_emb) if dev_set else None
    if dev:
        log(f"dev (generated): task accuracy {dev['task_accuracy']:.2f} %, argument exact match "
            f"{dev['argument_exact_match']:.2f} %")
    seconds = time.perf_counter() - start
    info = {"config": asdict(cfg), "examples": len(train_set), "dev_examples": len(dev_set),
            "embed_seconds": round(embed_seconds, 1), "train_seconds": round(train_seconds, 1),
            "seconds": round(seconds, 1),
            "dev": {k: dev[k] for k in ("task_accuracy", "argument_exact_match", "per_task")} if dev else None}
    folder = router.save(Path(cfg.out) / "model", info)
    info["model"] = str(folder)
    info["size_bytes"] = sum(p.stat().st_size for p in folder.iterdir())
    return info
