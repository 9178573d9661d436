"""Contrastive training (symmetric InfoNCE, learnable temperature) of TerraVL's dual encoder.

The loop is visible on purpose (nanoGPT style): decode the images once, compute the frozen text tower's features
once, then per step augment a batch, embed it, and match images to captions. Captions that are identical across
images, and class prompts of the same class, count as positives too (RSICD repeats captions). Checkpoints hold the
config beside the weights; ``resume`` continues from the last one; a fixed seed makes a CPU run repeatable. The loop
itself (device, mixed precision on CUDA, schedule, checkpoints) is :func:`terravl.train.loop.fit`, shared with
the captioner's training; this module says what one step of contrastive training is.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from terravl.eval.retrieval import retrieval_metrics
from terravl.eval.zeroshot import classification_metrics
from terravl.models.terravl_encoder import DEFAULT_CONFIG, LITE0_IMAGE, TerraVLModel
from terravl.train.augment import augment
from terravl.train.data import TextTable, decode_split, describe_data, load_records, text_features
from terravl.train.loop import fit, start, total_steps
from terravl.train.settings import settings_from_dict


@dataclass
class TrainConfig:
    """Flat training settings; every field can be set from YAML (``--config``) or the command line. The defaults
    are those of configs/terravl-default-v1.yaml, the from-scratch recipe (a test keeps them equal), except
    ``data``, which has none."""

    data: str | list[str] | None = None  # required: a caption JSON or class folders, or a list of them
    model: str = "terravl-cnn"           # terravl-cnn (from scratch), terravl-lite0 (ImageNet EfficientNet-Lite0),
                                         # or an OpenCLIP model to fine-tune
    init: str | None = None              # start from a TerraVL model's weights (registry name or folder)
    freeze_image: bool = False
    freeze_text: bool = True
    lora_image: int = 0
    lora_text: int = 0
    train_split: str | list[str] = "train"    # one for all datasets, or one per dataset in ``data``
    eval_split: str | list[str] = "test"
    label_captions: bool = False         # object multi-labels as one more caption ("an aerial image with cars …")
    out: str = "runs/terravl-default"
    epochs: int = 60
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    resolution: int = 112
    cache_resolution: int = 128
    crop_scale: tuple[float, float] = (0.5, 1.0)
    jitter: float = 0.2
    class_prompt_prob: float = 0.2
    widths: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (1, 1, 1, 1)
    embed_dim: int = 384
    text_projection: str = "linear"
    dropout: float = 0.0
    frozen_stages: int = 0               # terravl-lite0: stem and first N of its 7 stages stay fixed
    image_head: str = "mlp"              # terravl-lite0: projection to embed_dim, linear or mlp
    head_hidden: int = 1024
    backbone_lr_scale: float = 1.0       # terravl-lite0: the pretrained trunk learns at lr × this
    storage: str = "float32"             # dtype of the exported weights file: float32 or float16 (half the size)
    memory_storage: str = "float16"      # caption memory rows: float16, or int8 with a scale per row (half again)
    seed: int = 0
    device: str = "auto"                 # auto (CUDA if present), cpu, cuda
    precision: str = "auto"              # auto (fp16 autocast on CUDA, fp32 on CPU), fp32, fp16, bf16
    threads: int | None = None
    max_steps: int | None = None
    stop_after_epochs: int | None = None
    val_fraction: float = 0.05
    memory: bool = True
    text_memory: bool = False            # texts read the caption memory too (settings chosen on validation)
    text_memory_clusters: int = 2048     # ... through this many k-means clusters of its caption prototypes
    limit_train: int | None = None
    limit_eval: int | None = None
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        cfg = settings_from_dict(cls, values)
        cfg.crop_scale = tuple(cfg.crop_scale)
        cfg.widths, cfg.depths = tuple(cfg.widths), tuple(cfg.depths)
        if cfg.data is not None:
            sources(cfg)
        return cfg


@dataclass(frozen=True)
class Source:
    """One dataset of a run: where it is, which split trains and which one scores, and a short name for the
    scores (the dataset folder's name, e.g. ``rsicd_aid``)."""

    data: str
    train_split: str
    eval_split: str
    name: str


def sources(cfg: TrainConfig) -> list[Source]:
    """The run's datasets with their splits; refuses split lists of the wrong length and an evaluation split equal
    to the training split (scores on trained images would mean nothing)."""
    data = cfg.data if isinstance(cfg.data, (list, tuple)) else [cfg.data]
    if not data or not all(isinstance(d, str) and d for d in data):
        raise ValueError("data: give a dataset path or a list of them")

    def per_dataset(value, field_name: str) -> list[str]:
        values = list(value) if isinstance(value, (list, tuple)) else [value] * len(data)
        if len(values) != len(data) or not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"{field_name}: give one split name, or a list of {len(data)} (one per dataset in "
                             f"data), got {value!r}")
        return values

    train_splits = per_dataset(cfg.train_split, "train_split")
    eval_splits = per_dataset(cfg.eval_split, "eval_split")
    out, names = [], set()
    for path, tr, ev in zip(data, train_splits, eval_splits):
        if tr == ev and tr != "none":
            raise ValueError(f"eval_split: {path} would be scored on its training split {tr!r}")
        name = _short_name(path)
        while name in names:
            name += "_"
        names.add(name)
        out.append(Source(path, tr, ev, name))
    return out


def _short_name(path: str) -> str:
    p = Path(path)
    return (p.parent.name if p.suffix.lower() == ".json" else p.name) or p.stem


def model_config(cfg: TrainConfig, mean, std) -> dict:
    config = json.loads(json.dumps(DEFAULT_CONFIG))
    config["embed_dim"] = cfg.embed_dim
    config["text"]["projection"] = cfg.text_projection
    if cfg.storage not in ("float32", "float16"):
        raise ValueError(f"storage: float32 or float16, got {cfg.storage!r}")
    if cfg.storage == "float16":
        config["storage"] = "float16"
    if cfg.memory_storage not in ("float16", "int8"):
        raise ValueError(f"memory_storage: float16 or int8, got {cfg.memory_storage!r}")
    if cfg.model == "terravl-lite0":
        config["arch"] = "terravl-lite0"
        config["image"] = {**LITE0_IMAGE, "head": cfg.image_head, "hidden": cfg.head_hidden,
                           "resolution": cfg.resolution, "dropout": cfg.dropout}
        return config
    config["image"].update(widths=list(cfg.widths), depths=list(cfg.depths), resolution=cfg.resolution,
                           dropout=cfg.dropout, mean=mean, std=std)
    return config


def prepare_data(cfg: TrainConfig):
    """Decoded training images (at the cache resolution, for random crops), each dataset's evaluation images (at
    the model's resolution) and, when ``val_fraction`` > 0, a validation part of the training images that is never
    trained on (it chooses the caption-memory settings, so the evaluation splits stay untouched).

    Class names become readable phrases (``denseresidential`` and ``DenseResidential`` are one class, "dense
    residential"), so datasets that share a scene type share its prompts."""
    table = TextTable()
    train_rows, eval_sets, classes_of = [], [], {}
    for source in sources(cfg):
        rows = load_records(source.data, source.train_split, cfg.label_captions)[: cfg.limit_train]
        held = load_records(source.data, source.eval_split)[: cfg.limit_eval]
        overlap = {str(p) for p, _, _ in rows} & {str(p) for p, _, _ in held}
        if overlap:
            raise ValueError(f"{source.data}: {len(overlap)} images are in both the training and the evaluation "
                             "split")
        train_rows += rows
        eval_sets.append((source, held))
        classes_of[source.name] = sorted({c for _, _, c in rows + held if c})
    table.add_classes(sorted({c for names in classes_of.values() for c in names}))
    val_rows = []
    if cfg.val_fraction > 0 and len(train_rows) >= 20:
        order = np.random.default_rng(cfg.seed).permutation(len(train_rows))
        n_val = max(1, int(round(cfg.val_fraction * len(train_rows))))
        val_rows = [train_rows[i] for i in sorted(order[:n_val])]
        train_rows = [train_rows[i] for i in sorted(order[n_val:])]
    train = decode_split(train_rows, cfg.cache_resolution, table, cfg.progress)
    evaluations = []
    for source, held in eval_sets:
        split = decode_split(held, cfg.resolution, table, cfg.progress)
        split.name = source.name
        split.class_ids = [table.classes.index(c) for c in classes_of[source.name]]
        evaluations.append(split)
    validation = decode_split(val_rows, cfg.resolution, table, cfg.progress) if val_rows else None
    train.rows, train.val_rows = train_rows, val_rows
    return table, train, evaluations, validation


def positives(cap_ids: torch.Tensor, labels: torch.Tensor, text_ids: torch.Tensor, text_class: torch.Tensor
              ) -> torch.Tensor:
    """(B, B) bool: image i matches text j if j's string is one of i's captions or a prompt of i's class."""
    same_caption = (cap_ids[:, :, None] == text_ids[None, None, :]).any(dim=1)
    same_class = (text_class[None, :] >= 0) & (labels[:, None] == text_class[None, :])
    return same_caption | same_class | torch.eye(len(text_ids), dtype=torch.bool)


def contrastive_loss(image_emb, text_emb, logit_scale, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with several positives per row/column (targets spread evenly over them)."""
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T
    targets = pos.float()
    i2t = -(targets / targets.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(targets / targets.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
    return (i2t + t2i) / 2


@torch.inference_mode()
def evaluate(model: TerraVLModel, evaluation, table: TextTable, feats: torch.Tensor, mean, std,
             batch_size: int = 256) -> dict:
    """Retrieval (RS protocol) and prompt-ensemble zero-shot on the evaluation split, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    mean_t = torch.tensor(mean).view(1, 3, 1, 1).to(device)
    std_t = torch.tensor(std).view(1, 3, 1, 1).to(device)
    emb = []
    for first in range(0, len(evaluation.paths), batch_size):
        pixels = (evaluation.images[first:first + batch_size].to(device).float() / 255 - mean_t) / std_t
        emb.append(F.normalize(model.encode_image(pixels), dim=-1))
    image_emb = torch.cat(emb)
    out: dict = {}
    caps = [c for ids in evaluation.captions for c in ids]
    if caps:
        text_emb = F.normalize(_embed_text(model, feats[caps]), dim=-1)
        owner = np.repeat(np.arange(len(evaluation.paths)), [len(c) for c in evaluation.captions])
        out.update(retrieval_metrics((image_emb @ text_emb.T).cpu().numpy(), owner))
    labels = np.array(evaluation.labels)
    class_ids = getattr(evaluation, "class_ids", None) or list(range(len(table.classes)))
    if table.classes and (labels >= 0).all() and set(labels.tolist()) <= set(class_ids):
        # zero-shot over this dataset's own classes only (UC Merced's 21, AID's 30), as `eval zeroshot` scores it
        prompt_ids = torch.tensor([table.prompt_ids[c] for c in class_ids])
        prompts = F.normalize(_embed_text(model, feats[prompt_ids].reshape(-1, feats.shape[1])),
                              dim=-1).reshape(len(class_ids), -1, image_emb.shape[1]).mean(1)
        pred = (image_emb @ F.normalize(prompts, dim=-1).T).argmax(1).cpu().numpy()
        local = np.searchsorted(np.array(class_ids), labels)
        out["zeroshot_top1"] = classification_metrics(local, pred, [table.classes[c] for c in class_ids])["top1"]
    model.train()
    return out


def _embed_text(model, features: torch.Tensor) -> torch.Tensor:
    """Projected text features as the shipped encoder makes them (the caption memory's text side, once the model
    has one; during training it has none)."""
    projected = model.encode_text_features(features)
    return model.apply_text_memory(projected) if hasattr(model, "apply_text_memory") else projected


def evaluate_all(model: TerraVLModel, evaluations: list, table: TextTable, feats: torch.Tensor, mean, std) -> dict:
    """Scores of each dataset's evaluation split: plain keys for one dataset; ``name:key`` for several, plus
    ``mean_mR`` over them."""
    if len(evaluations) == 1:
        return evaluate(model, evaluations[0], table, feats, mean, std)
    out: dict = {}
    for split in evaluations:
        out.update({f"{split.name}:{k}": v for k, v in evaluate(model, split, table, feats, mean, std).items()})
    found = [out[f"{s.name}:mR"] for s in evaluations if f"{s.name}:mR" in out]
    if found:
        out["mean_mR"] = float(np.mean(found))
    return out


def train(cfg: TrainConfig, resume: bool = False, log=print) -> dict:
    """Train on ``cfg.device``, evaluate and checkpoint each epoch, export the final model to ``out/model``."""
    run = start(cfg)
    if cfg.model in ("terravl-cnn", "terravl-lite0"):
        table, train_split, eval_split, val_split = prepare_data(cfg)
        feats = text_features(table, run.out / "cache", cfg.progress)
        if cfg.init:
            model = _initial_model(cfg)
            mean, std = model.config["image"]["mean"], model.config["image"]["std"]
        elif cfg.model == "terravl-lite0":
            mean, std = LITE0_IMAGE["mean"], LITE0_IMAGE["std"]
            model = TerraVLModel(model_config(cfg, mean, std))
            from terravl.models.efficientnet_lite import load_imagenet_weights

            load_imagenet_weights(model.image_tower.trunk)
            log("image tower: EfficientNet-Lite0 with its ImageNet weights")
        else:
            pixels = train_split.images.float() / 255
            mean = pixels.mean(dim=(0, 2, 3)).tolist()
            std = pixels.std(dim=(0, 2, 3)).tolist()
            del pixels
            model = TerraVLModel(model_config(cfg, mean, std))
        if hasattr(model.image_tower, "freeze"):
            model.image_tower.freeze(cfg.frozen_stages)
        model.image_tower.to(memory_format=torch.channels_last)
    else:
        model = _open_clip_model(cfg)
        mean, std = model.mean, model.std
        table, train_split, eval_split, val_split = prepare_data(cfg)
        feats = model.text_inputs(table.strings)
    model.to(run.device)
    feats = feats.to(run.device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
    n = len(train_split.paths)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = total_steps(cfg.max_steps, cfg.epochs, steps_per_epoch)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1).to(run.device)
    std_t = torch.tensor(std).view(1, 3, 1, 1).to(run.device)
    caption_matrix = _caption_matrix(train_split.captions)
    labels = torch.tensor(train_split.labels)
    prompt_table = torch.tensor(table.prompt_ids) if table.prompt_ids else None

    def plan_epoch() -> torch.Tensor:
        return torch.randperm(n, generator=run.generator)

    def make_batch(order: torch.Tensor, b: int) -> dict:
        """Texts, then augmented images, drawn on the CPU from the run's generator (device-independent)."""
        idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        text_ids, text_class = _sample_texts(idx, caption_matrix, labels, prompt_table, cfg.class_prompt_prob,
                                             run.generator)
        images = augment(train_split.images[idx], cfg.resolution, cfg.crop_scale, cfg.jitter, run.generator)
        return {"images": images, "text_ids": text_ids,
                "positives": positives(caption_matrix[idx], labels[idx], text_ids, text_class)}

    def compute_loss(batch: dict) -> torch.Tensor:
        images = (batch["images"] / 255 - mean_t) / std_t
        image_emb = F.normalize(_base_image(model, images), dim=-1)
        text_emb = F.normalize(model.encode_text_features(feats[batch["text_ids"]]), dim=-1)
        return contrastive_loss(image_emb, text_emb, model.logit_scale, batch["positives"])

    state = fit(run, cfg, model, optimizer, total=total, steps_per_epoch=steps_per_epoch,
                warmup=int(cfg.warmup_epochs * steps_per_epoch), plan_epoch=plan_epoch, make_batch=make_batch,
                compute_loss=compute_loss, evaluate=lambda: evaluate_all(model, eval_split, table, feats, mean, std),
                resume=resume, log=log)
    final = state["history"][-1] if state["history"] else {}
    if cfg.memory and isinstance(model, TerraVLModel) and val_split is not None and state["step"] >= total:
        choice = attach_memory(model, cfg, train_split, val_split, table, feats, mean, std, log)
        if choice is not None:
            final = {**final, **evaluate_all(model, eval_split, table, feats, mean, std), "memory": choice}
            log("with caption memory: " + " ".join(f"{k} {v:.2f}" for k, v in final.items()
                                                   if isinstance(v, float)))
    info = {"config": asdict(cfg), "data": _describe(cfg, train_split, eval_split), "scores": final,
            "history": state["history"], "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": str(run.device), "precision": run.precision}
    model.eval()
    folder = model.save(run.out / "model", {"training": {"data": cfg.data, "scores": final}})
    (folder / "training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: weight decay on matrices and kernels only; a pretrained trunk (``image_tower.trunk``) at
    ``lr × backbone_lr_scale``, so the new projection can move fast while the ImageNet features move little."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.ndim >= 2, name.startswith("image_tower.trunk.")), []).append(p)
    return [{"params": params, "weight_decay": cfg.weight_decay if decay else 0.0,
             "lr": cfg.lr * (cfg.backbone_lr_scale if trunk else 1.0)}
            for (decay, trunk), params in sorted(groups.items())]


def _describe(cfg: TrainConfig, train_split, evaluations: list) -> dict:
    info = describe_data(cfg.data if isinstance(cfg.data, str) else cfg.data[0], train_split, evaluations[0])
    if len(evaluations) > 1:
        from terravl.train.data import file_checksum

        info.pop("dataset_sha256", None)
        info["dataset"] = [s.data for s in sources(cfg)]
        info["eval_images"] = {e.name: len(e.paths) for e in evaluations}
        info["skipped"] = train_split.skipped + [x for e in evaluations for x in e.skipped]
        info["datasets_sha256"] = {s.name: file_checksum(Path(s.data)) for s in sources(cfg) if Path(s.data).is_file()}
    return info


def _initial_model(cfg: TrainConfig) -> TerraVLModel:
    """The image tower and text projection of an existing TerraVL model (fine-tuning from it): its architecture
    and normalisation are kept; its caption memory is dropped (training builds a new one from its own images)."""
    import terravl.models as m

    encoder = m.load(cfg.init, device="cpu", precision="fp32")
    source = getattr(encoder, "model", None)
    if not isinstance(source, TerraVLModel):
        raise ValueError(f"init: {cfg.init!r} is not a TerraVL model (fine-tuning others: set model=...)")
    config = {k: v for k, v in json.loads(json.dumps(source.config)).items() if k != "memory"}
    config["image"]["resolution"] = cfg.resolution
    model = TerraVLModel(config)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("memory_")}
    model.load_state_dict(state)
    return model.train()


def _base_image(model, images: torch.Tensor) -> torch.Tensor:
    return model.encode_image_base(images) if hasattr(model, "encode_image_base") else model.encode_image(images)


MEMORY_GRID = {"k": (10, 20, 50), "tau": (0.02, 0.05, 0.1), "alpha": (0.0, 0.25, 0.5, 0.75)}
TEXT_MEMORY_GRID = {"k": (1, 3, 5, 10, 20), "tau": (0.02, 0.05, 0.1), "beta": (0.5, 0.6, 0.7, 0.8, 0.9)}


@torch.inference_mode()
def attach_memory(model: TerraVLModel, cfg: TrainConfig, train_split, val_split, table: TextTable, feats, mean, std,
                  log=print) -> dict | None:
    """Build the caption memory from the training images and choose (k, τ, α) on the validation part of the
    training split — never on the evaluation split. Attached only if it beats the plain model there."""
    from terravl.models.terravl_encoder import blend_with_memory

    model.eval()
    train_eval = decode_split(train_split.rows, cfg.resolution, table, cfg.progress)
    device = next(model.parameters()).device
    mean_t = torch.tensor(mean).view(1, 3, 1, 1).to(device)
    std_t = torch.tensor(std).view(1, 3, 1, 1).to(device)

    def embed(split):
        return torch.cat([F.normalize(model.encode_image_base((split.images[i:i + 256].to(device).float() / 255
                                                               - mean_t) / std_t), dim=-1)
                          for i in range(0, len(split.paths), 256)])

    keys = embed(train_eval)
    values = []
    for caps, label in zip(train_eval.captions, train_eval.labels):
        ids = caps or (table.prompt_ids[label] if label >= 0 else [])
        values.append(F.normalize(F.normalize(model.encode_text_features(feats[ids]), dim=-1).mean(0), dim=0)
                      if ids else torch.zeros(keys.shape[1], device=device))
    values = torch.stack(values)
    val_images = embed(val_split)
    caps = [c for ids in val_split.captions for c in ids]
    if not caps:
        return None
    text = F.normalize(model.encode_text_features(feats[caps]), dim=-1)
    owner = np.repeat(np.arange(len(val_split.paths)), [len(c) for c in val_split.captions])
    plain = retrieval_metrics((val_images @ text.T).cpu().numpy(), owner)["mR"]
    best = _best_on_grid(MEMORY_GRID, plain, lambda k, tau, alpha: retrieval_metrics(
        (F.normalize(blend_with_memory(val_images, keys, values, k, tau, alpha), dim=-1) @ text.T).cpu().numpy(),
        owner)["mR"]) or {"alpha": 1.0, "mR": plain}
    log(f"caption memory on the validation part ({len(val_split.paths)} images): plain mR {plain:.2f}, best "
        f"{best}")
    if best["alpha"] >= 1.0:
        return None
    model.set_memory(keys, values, best["k"], best["tau"], best["alpha"], storage=cfg.memory_storage)
    choice = {**best, "validation_mR_plain": plain, "size": int(keys.shape[0])}
    if cfg.text_memory:
        blended = F.normalize(model.apply_memory(val_images), dim=-1)
        text_choice = choose_text_memory(model, blended, text, owner, cfg.text_memory_clusters, seed=cfg.seed,
                                         log=log)
        if text_choice is not None:
            choice["text"] = text_choice
    return choice


def _best_on_grid(grid: dict[str, tuple], floor: float, score) -> dict | None:
    """The settings of ``grid`` (every combination, in its order) whose ``score(**settings)`` is highest and above
    ``floor``, with that score as ``mR``; None when none beats it (the first of equal scores wins)."""
    best = None
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values))
        found = score(**settings)
        if found > (best["mR"] if best else floor):
            best = {**settings, "mR": found}
    return best


def choose_text_memory(model: TerraVLModel, val_images: torch.Tensor, val_texts: torch.Tensor, owner: np.ndarray,
                       clusters: int = 2048, seed: int = 0, log=print) -> dict | None:
    """Cluster the attached caption memory's prototypes (:func:`text_memory_clusters`) and choose the text
    side's blend (k, τ, β; :data:`TEXT_MEMORY_GRID`) on validation images (their final embeddings, the stored
    memory's) and captions (projected, normalised); set it on the model when it beats those texts unblended
    (``validation_mR_without``), else return None and leave the model as it was."""
    from terravl.models.terravl_encoder import blend_text_with_memory, text_memory_clusters

    baseline_mR = retrieval_metrics((val_images @ val_texts.T).cpu().numpy(), owner)["mR"]
    keys, values = text_memory_clusters(*model._memory_fp32(), clusters, seed=seed)
    best = _best_on_grid(TEXT_MEMORY_GRID, baseline_mR, lambda k, tau, beta: retrieval_metrics(
        (val_images @ F.normalize(blend_text_with_memory(val_texts, keys, values, k, tau, beta), dim=-1).T)
        .cpu().numpy(), owner)["mR"])
    log(f"text side of the caption memory ({len(values)} clusters) on the validation part: mR {baseline_mR:.2f} "
        f"without, best {best or 'none better'}")
    if best is None:
        return None
    model.set_text_memory(keys, values, best["k"], best["tau"], best["beta"])
    return {**best, "clusters": int(len(values)), "validation_mR_without": baseline_mR}


def _open_clip_model(cfg: TrainConfig):
    """A registry (or file) OpenCLIP model prepared for fine-tuning; sets the resolution to the model's own."""
    import terravl.models as m
    from terravl.train.openclip_trainable import OpenCLIPTrainable

    encoder = m.load(cfg.model, device="cpu", precision="fp32")
    if not hasattr(encoder, "model") or not hasattr(encoder.model, "encode_text"):
        raise ValueError(f"{cfg.model!r} is not an OpenCLIP model; fine-tuning supports OpenCLIP and terravl-cnn")
    model = OpenCLIPTrainable(encoder, cfg.freeze_image, cfg.freeze_text, cfg.lora_image, cfg.lora_text)
    cfg.resolution = model.resolution
    cfg.cache_resolution = max(cfg.cache_resolution, round(model.resolution * 8 / 7))
    return model


def _caption_matrix(captions: list[list[int]]) -> torch.Tensor:
    width = max((len(c) for c in captions), default=1) or 1
    m = torch.full((len(captions), width), -1, dtype=torch.long)
    for i, c in enumerate(captions):
        if c:
            m[i, : len(c)] = torch.tensor(c)
    return m


def _sample_texts(idx, caption_matrix, labels, prompt_table, class_prob: float, generator):
    """One text per image: a random one of its captions, or (with ``class_prob``, or when it has none) a random
    prompt of its class. Returns string ids and, for prompts, the class (else -1)."""
    caps = caption_matrix[idx]
    counts = (caps >= 0).sum(1)
    pick = (torch.rand(len(idx), generator=generator) * counts.clamp(min=1)).long()
    text_ids = caps[torch.arange(len(idx)), pick]
    text_class = torch.full((len(idx),), -1, dtype=torch.long)
    if prompt_table is not None:
        use_prompt = (torch.rand(len(idx), generator=generator) < class_prob) | (counts == 0)
        use_prompt &= labels[idx] >= 0
        if use_prompt.any():
            which = torch.randint(0, prompt_table.shape[1], (int(use_prompt.sum()),), generator=generator)
            text_ids[use_prompt] = prompt_table[labels[idx][use_prompt], which]
            text_class[use_prompt] = labels[idx][use_prompt]
    return text_ids, text_class
