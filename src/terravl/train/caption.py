"""Training of the captioning / VQA bridge (``terravl train caption``).

The recipe is RS-CapRet's, sized for a CPU: the image encoder is frozen, so its features are computed once per
image and augmentation view (identity and flips) and cached; each step maps a batch of features to prefixes and
trains next-token prediction on a caption or an answer. With TerraVL's own decoder the language model trains from
scratch beside the mapping; with a user's language model (``lm=PATH``) only the mapping trains, or LoRA adapters
too (``lora=R``). Each epoch scores greedy captions of a validation part of the training split (CIDEr-D) and the
best epoch is exported; the evaluation split is scored once, at the end, for the record. The loop itself (device,
mixed precision on CUDA, schedule, checkpoints, resume) is :func:`terravl.train.loop.fit`, shared with ``train
clip``.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from terravl.datasets import open_dataset
from terravl.datasets.derived_vqa import derive_questions
from terravl.datasets.records import CaptionRecord, VQARecord
from terravl.errors import InputError
from terravl.models.bridge import CAPTION_PROMPT, Captioner, question_prompt, small_decoder
from terravl.models.feature_cache import VIEWS, image_features
from terravl.models.word_tokenizer import train_word_tokenizer
from terravl.train.loop import fit, start, total_steps
from terravl.train.settings import settings_from_dict


@dataclass
class CaptionTrainConfig:
    """Flat settings; each can be set from YAML (``--config``) or ``--set KEY=VALUE``. The defaults are those of
    configs/terravl-captioner.yaml (a test keeps them equal), except ``data``, which has none."""

    data: str | None = None               # required: a caption JSON or an RSVQA folder (--data or the YAML)
    out: str = "runs/terravl-captioner"
    encoder: str = "terravl-default"
    lm: str | None = None                 # None: TerraVL's own small decoder, trained from scratch
    lora: int = 0
    train_split: str = "train"
    eval_split: str | None = "test"
    val_fraction: float = 0.05
    vqa: bool = True                      # derived questions (caption datasets) or the dataset's own (RSVQA)
    questions_per_image: float = 1.0      # question samples per caption sample in an epoch
    epochs: int = 12
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    prefix_len: int = 8
    hidden: int = 1024
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.1
    vocab_min_frequency: int = 2
    views: int = 3                        # feature views per training image: identity, h-flip, v-flip
    feature_noise: float = 0.0
    beams: int = 3
    max_tokens: int = 40
    seed: int = 0
    device: str = "auto"                  # auto (CUDA if present), cpu, cuda
    precision: str = "auto"               # auto (fp16 autocast on CUDA, fp32 on CPU), fp32, fp16, bf16
    threads: int | None = None
    max_steps: int | None = None
    stop_after_epochs: int | None = None
    limit_train: int | None = None
    limit_eval: int | None = None
    progress: bool = True
    name: str = "terravl-captioner"

    @classmethod
    def from_dict(cls, values: dict) -> "CaptionTrainConfig":
        return settings_from_dict(cls, values)


@dataclass
class ImageSamples:
    """One image and what it teaches: its captions and its (question, answer, type) triples."""

    path: Path
    image_id: int | str
    captions: list[str] = field(default_factory=list)
    questions: list[tuple[str, str, str]] = field(default_factory=list)
    label: str | None = None


def load_samples(data: str | Path, split: str, vqa: bool = True) -> list[ImageSamples]:
    """Images of ``split`` with their captions (caption JSON) and questions (derived from the captions and scene
    class, or a VQA dataset's own)."""
    records = list(open_dataset(data))
    by_image: dict = {}
    captions = [r for r in records if isinstance(r, CaptionRecord) and r.path is not None]
    for r in captions:
        if r.split == split:
            by_image[r.image_id] = ImageSamples(r.path, r.image_id, list(r.captions), label=r.label)
    questions = [r for r in records if isinstance(r, VQARecord)]
    if vqa and not questions and captions:
        questions = derive_questions(captions)
    for q in questions:
        if q.split != split or q.path is None:
            continue
        item = by_image.setdefault(q.image_id, ImageSamples(q.path, q.image_id))
        item.questions.append((q.question, q.answer, q.question_type))
    out = [s for s in by_image.values() if s.captions or s.questions]
    if not out:
        raise InputError(data, f"no images with captions or questions in split {split!r}")
    return out


def build_captioner(cfg: CaptionTrainConfig, train_items: list[ImageSamples], feature_dim: int) -> Captioner:
    """A fresh bridge: own decoder (tokenizer from the training texts) or the user's local LM."""
    if cfg.lm is None:
        texts = [c for s in train_items for c in s.captions]
        texts += [f"{question_prompt(q)} {a}" for s in train_items for q, a, _ in s.questions] + [CAPTION_PROMPT]
        tokenizer = train_word_tokenizer(texts, cfg.vocab_min_frequency)
        lm = small_decoder(tokenizer, cfg.n_embd, cfg.n_layer, cfg.n_head, dropout=cfg.dropout)
        lm_path = None
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (Path(cfg.lm) / "config.json").is_file():
            raise InputError(cfg.lm, "not a Hugging Face model folder (config.json missing); TerraVL never "
                                     "downloads: give a local path")
        lm = AutoModelForCausalLM.from_pretrained(cfg.lm, dtype=torch.float32, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(cfg.lm, local_files_only=True)
        lm_path = cfg.lm
    return Captioner.build(lm, tokenizer, feature_dim, encoder=cfg.encoder, prefix_len=cfg.prefix_len,
                           hidden=cfg.hidden, dropout=cfg.dropout, lm_path=lm_path, lora=cfg.lora,
                           beams=cfg.beams, max_tokens=cfg.max_tokens, name=cfg.name)


def train(cfg: CaptionTrainConfig, resume: bool = False, log=print) -> dict:
    """Train on ``cfg.device``, checkpoint every epoch (``--resume`` continues), export the best epoch to
    ``out/model``."""
    import terravl.models as models
    from terravl.eval.captions import score_captions

    run = start(cfg)
    items = load_samples(cfg.data, cfg.train_split, cfg.vqa)[: cfg.limit_train]
    order = np.random.default_rng(cfg.seed).permutation(len(items))
    n_val = int(round(cfg.val_fraction * len(items))) if len(items) >= 20 else 0
    val_items = [items[i] for i in sorted(order[:n_val])]
    train_items = [items[i] for i in sorted(order[n_val:])]
    encoder = models.load(cfg.encoder, device=run.device)
    if hasattr(encoder, "use_memory"):
        encoder.use_memory = False
    cache = run.out / "cache"
    views = VIEWS[: max(1, cfg.views)]
    base, kept, failed = image_features(encoder, [s.path for s in train_items], "identity", cache, cfg.progress)
    for f in failed:
        log(f"skipped {f['path']}: {f['error']}")
    train_items = [train_items[i] for i in kept]
    features = [torch.from_numpy(base)] + [
        torch.from_numpy(image_features(encoder, [s.path for s in train_items], v, cache, cfg.progress)[0])
        for v in views[1:]]
    val_feats, val_kept, _ = image_features(encoder, [s.path for s in val_items], "identity", cache, cfg.progress) \
        if val_items else (np.zeros((0, base.shape[1]), np.float32), [], [])
    val_items = [val_items[i] for i in val_kept]

    model = build_captioner(cfg, train_items, base.shape[1]).to(run.device)
    caption_prompt = model.prompt_ids(CAPTION_PROMPT)
    captions = [[model.target_ids(c) for c in s.captions] for s in train_items]
    questions = [[(model.prompt_ids(question_prompt(q)), model.target_ids(a)) for q, a, _ in s.questions]
                 for s in train_items]
    with_q = [i for i, q in enumerate(questions) if q]
    with_c = [i for i, c in enumerate(captions) if c]
    per_epoch = len(with_c) + int(round(cfg.questions_per_image * len(with_q)))
    steps_per_epoch = max(1, math.ceil(per_epoch / cfg.batch_size))
    total = total_steps(cfg.max_steps, cfg.epochs, steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    log(f"training {sum(p.numel() for p in params) / 1e6:.2f} M parameters on {len(train_items)} images "
        f"({len(views)} views), {per_epoch} samples per epoch; validation: {len(val_items)} images; "
        f"{run.device}, {run.precision}")

    def plan_epoch() -> list[tuple[int, int]]:
        """Every caption sample once and questions drawn at random, shuffled (Python's seeded RNG)."""
        samples = [(i, -1) for i in with_c] + [(i, 1) for i in random.choices(with_q, k=per_epoch - len(with_c))]
        random.shuffle(samples)
        return samples

    def make_batch(samples: list[tuple[int, int]], b: int):
        """Features (a random view each, optional noise) and prompt/target token ids, drawn on the CPU."""
        batch = samples[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        if not batch:
            return None
        idx = torch.tensor([i for i, _ in batch])
        view = torch.randint(0, len(features), (len(batch),))
        feats = torch.stack([features[v][i] for v, i in zip(view.tolist(), idx.tolist())])
        if cfg.feature_noise > 0:
            feats = feats + cfg.feature_noise * torch.randn_like(feats)
        prompts, targets = [], []
        for i, kind in batch:
            if kind < 0:
                prompts.append(caption_prompt)
                targets.append(random.choice(captions[i]))
            else:
                p, t = random.choice(questions[i])
                prompts.append(p)
                targets.append(t)
        return feats, prompts, targets

    def validate() -> dict:
        """The evaluation hook: CIDEr-D and BLEU-4 of greedy captions of the validation part."""
        if not val_items:
            return {}
        preds = model.generate(val_feats, CAPTION_PROMPT, beams=1, max_tokens=cfg.max_tokens)
        refs = {k: val_items[k].captions for k in range(len(val_items)) if val_items[k].captions}
        if not refs:
            return {}
        scores = score_captions(refs, {k: preds[k] for k in refs}, with_meteor=False)
        return {"val_CIDEr": scores["CIDEr"], "val_Bleu_4": scores["Bleu_4"]}

    state = fit(run, cfg, model, optimizer, total=total, steps_per_epoch=steps_per_epoch, warmup=cfg.warmup_steps,
                plan_epoch=plan_epoch, make_batch=make_batch,
                compute_loss=lambda batch: model.loss_from_ids(*batch), evaluate=validate, resume=resume,
                clip_grad=1.0, trainable_only=True, keep_best="val_CIDEr", log=log)
    best_file = run.out / "best.pt"
    if best_file.is_file():
        model.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True), strict=False)
    model.eval()
    info = {"config": asdict(cfg), "best_epoch": state["best"], "history": state["history"],
            "data": _describe(cfg, train_items, val_items), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(run.device), "precision": run.precision,
            "elapsed_s": round(state["elapsed"], 1)}
    folder = model.save(run.out / "model", {"name": cfg.name})
    model._encoder = encoder
    if cfg.eval_split and state["step"] >= total:
        info["scores"] = evaluate_split(model, cfg, log, captions=any(s.captions for s in train_items),
                                        questions=any(s.questions for s in train_items))
    (folder / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def evaluate_split(model: Captioner, cfg: CaptionTrainConfig, log=print, captions: bool = True,
                   questions: bool = True) -> dict:
    """Captioning (coco-caption, with METEOR) and VQA accuracy (the dataset's questions, or derived ones) on the
    evaluation split, for what the training data had."""
    from terravl.eval.runners import eval_caption_model, eval_vqa_model

    result = {}
    if captions:
        result["caption"] = eval_caption_model(cfg.data, model, cfg.eval_split, limit=cfg.limit_eval)["scores"]
        log("evaluation split captioning: " + " ".join(f"{k} {v:.4f}" for k, v in result["caption"].items()))
    if cfg.vqa and questions:
        result["vqa"] = eval_vqa_model(cfg.data, model, cfg.eval_split, limit=cfg.limit_eval)["scores"]
        log(f"evaluation split VQA: {result['vqa']['per_type']}")
    return result


def _describe(cfg: CaptionTrainConfig, train_items: list[ImageSamples], val_items: list[ImageSamples]) -> dict:
    from terravl.train.data import file_checksum, images_checksum

    info = {"dataset": cfg.data, "train_images": len(train_items), "validation_images": len(val_items),
            "train_captions": sum(len(s.captions) for s in train_items),
            "train_questions": sum(len(s.questions) for s in train_items),
            "train_images_sha256": images_checksum([s.path for s in train_items])}
    if Path(cfg.data).is_file():
        info["dataset_sha256"] = file_checksum(Path(cfg.data))
    counts = defaultdict(int)
    for s in train_items:
        for _, _, t in s.questions:
            counts[t] += 1
    info["train_questions_per_type"] = dict(counts)
    return info
