"""Dual encoders and captioners: one factory each (:func:`load`, :func:`load_captioner`), registries of named
configs (one JSON file per model in ``configs/``), builders by family, explicit weight sources, offline resolution.

>>> import terravl.models as m
>>> enc = m.load("remoteclip-vit-b-32")            # RemoteCLIP-ViT-B-32.pt in $TERRAVL_HOME/models
>>> enc = m.load("file:/data/RS5M_ViT-B-32.pt")    # or terravl:NAME, hf-hub:ORG/REPO[/FILE] (cache only)
>>> enc.encode_images(["a.jpg", "b.tif"]).shape    # (2, 512), L2-normalised float32
"""

from terravl.models.checkpoints import CheckpointError, read_state_dict
from terravl.models.encoder import Encoder
from terravl.models.factory import DEFAULT_CAPTIONER, DEFAULT_MODEL, load, load_captioner
from terravl.models.families import BUILDERS, register_family
from terravl.models.registry import (CAPTIONERS, REGISTRY, CaptionerConfig, ModelConfig, WeightsNotFoundError,
                                     get_captioner_config, get_config, list_models, register, register_captioner)
from terravl.models.sources import PREFIXES, parse_source

__all__ = ["BUILDERS", "CAPTIONERS", "DEFAULT_CAPTIONER", "DEFAULT_MODEL", "PREFIXES", "REGISTRY", "CaptionerConfig",
           "CheckpointError", "Encoder", "ModelConfig", "WeightsNotFoundError", "get_captioner_config", "get_config",
           "list_models", "load", "load_captioner", "parse_source", "read_state_dict", "register",
           "register_captioner", "register_family"]
