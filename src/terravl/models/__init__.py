"""Dual encoders and captioners: one factory each (:func:`load`, :func:`load_captioner`), registries of named
configs (one JSON file per model in ``configs/``), builders by family, explicit weight sources, offline resolution.

>>> import terravl.models as m
>>> enc = m.load("remoteclip-vit-b-32")            # RemoteCLIP-ViT-B-32.pt in $TERRAVL_HOME/models
>>> enc = m.load("file:/data/RS5M_ViT-B-32.pt")    # or terravl:NAME, hf-hub:ORG/REPO[/FILE] (cache only)
>>> enc.encode_images(["a.jpg", "b.tif"]).shape    # (2, 512), L2-normalised float32
"""

from terravl.lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": "checkpoints", "read_state_dict": "checkpoints", "Encoder": "encoder",
    "DEFAULT_CAPTIONER": "factory", "DEFAULT_MODEL": "factory", "load": "factory", "load_captioner": "factory",
    "BUILDERS": "families", "register_family": "families",
    "CAPTIONERS": "registry", "REGISTRY": "registry", "CaptionerConfig": "registry", "ModelConfig": "registry",
    "WeightsNotFoundError": "registry", "get_captioner_config": "registry", "get_config": "registry",
    "list_models": "registry", "register": "registry", "register_captioner": "registry",
    "PREFIXES": "sources", "parse_source": "sources",
}
lazy_exports(__name__, _EXPORTS)

__all__ = ["BUILDERS", "CAPTIONERS", "DEFAULT_CAPTIONER", "DEFAULT_MODEL", "PREFIXES", "REGISTRY", "CaptionerConfig",
           "CheckpointError", "Encoder", "ModelConfig", "WeightsNotFoundError", "get_captioner_config", "get_config",
           "list_models", "load", "load_captioner", "parse_source", "read_state_dict", "register",
           "register_captioner", "register_family"]
