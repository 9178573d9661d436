"""Dual encoders: one factory (:func:`load`), a registry of named configs, offline weight resolution.

>>> import terravl.models as m
>>> enc = m.load("remoteclip-vit-b-32")            # RemoteCLIP-ViT-B-32.pt in $TERRAVL_HOME/models
>>> enc.encode_images(["a.jpg", "b.tif"]).shape    # (2, 512), L2-normalised float32
"""

from terravl.models.checkpoints import CheckpointError, read_state_dict
from terravl.models.encoder import Encoder
from terravl.models.factory import DEFAULT_CAPTIONER, DEFAULT_MODEL, load, load_captioner
from terravl.models.registry import REGISTRY, ModelConfig, WeightsNotFoundError, get_config, list_models, register

__all__ = ["DEFAULT_CAPTIONER", "DEFAULT_MODEL", "REGISTRY", "CheckpointError", "Encoder", "ModelConfig", "WeightsNotFoundError",
           "get_config", "list_models", "load", "load_captioner", "read_state_dict", "register"]
