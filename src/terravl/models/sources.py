"""Where a model's weights come from, said with an explicit prefix instead of guessed from a file name.

``terravl.models.load`` and ``load_captioner`` accept:

``terravl:NAME``
    A registered model (``terravl models list``). Its weights are resolved on disk: shipped in the package, else
    ``$TERRAVL_HOME/models/<file>``, else the Hugging Face cache (files already there only).
``file:PATH``
    A checkpoint file (``.pt``/``.bin``/``.safetensors``) or a model folder (TerraVL, Hugging Face CLIP/SigLIP,
    captioner) on local disk. ``file:///abs/path`` is accepted too.
``hf-hub:ORG/REPO`` or ``hf-hub:ORG/REPO/PATH/IN/REPO``
    A Hugging Face Hub repository (a whole model folder) or one file in it, read from the local Hugging Face cache
    only: nothing is downloaded. Put it there beforehand with ``hf download ORG/REPO [PATH]``.

Without a prefix, a registered name means ``terravl:`` and an existing path means ``file:`` (as before prefixes
existed). Any other ``word:`` prefix is an :class:`~terravl.errors.InputError`.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

from terravl.errors import InputError

REGISTRY_PREFIX = "terravl"
FILE_PREFIX = "file"
HUB_PREFIX = "hf-hub"
PREFIXES = (REGISTRY_PREFIX, FILE_PREFIX, HUB_PREFIX)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")
"""Two or more characters before the colon, so a Windows drive (``C:``) is never read as a prefix."""


@dataclass(frozen=True)
class WeightSource:
    """A parsed model reference: ``prefix`` is one of :data:`PREFIXES`, ``target`` what follows it."""

    prefix: str
    target: str

    def __str__(self) -> str:
        return f"{self.prefix}:{self.target}"

    @property
    def path(self) -> Path:
        """The local path of a ``file:`` source."""
        return Path(self.target).expanduser()

    @property
    def hub_repo(self) -> str:
        """``ORG/REPO`` of an ``hf-hub:`` source."""
        return "/".join(self.target.split("/")[:2])

    @property
    def hub_file(self) -> str | None:
        """The path inside the repository of an ``hf-hub:`` source, or None for the whole repository."""
        rest = self.target.split("/")[2:]
        return "/".join(rest) or None


def parse_source(spec: str | Path, registered: Container[str] = ()) -> WeightSource:
    """Read ``spec`` as a prefixed reference; a bare registered name is ``terravl:``, a bare existing path
    ``file:``, and anything else bare ``terravl:`` (so an unknown name fails with the list of registered ones)."""
    if isinstance(spec, Path):
        return WeightSource(FILE_PREFIX, str(spec))
    text = str(spec)
    if text in registered:
        return WeightSource(REGISTRY_PREFIX, text)
    match = _SCHEME.match(text)
    if match and match.group(1) in PREFIXES:
        return _checked(WeightSource(match.group(1), text[match.end():]), text)
    if Path(text).expanduser().exists():
        return WeightSource(FILE_PREFIX, text)
    if match:
        raise InputError(text, f"unknown weight-source prefix {match.group(1) + ':'!r}; use one of "
                               f"{', '.join(p + ':' for p in PREFIXES)} (e.g. terravl:terravl-default, "
                               f"file:/path/model.pt, hf-hub:org/repo)")
    return WeightSource(REGISTRY_PREFIX, text)


def _checked(source: WeightSource, text: str) -> WeightSource:
    target = source.target
    if source.prefix == FILE_PREFIX and target.startswith("//"):
        target = target[2:]  # file:///abs/path → /abs/path
    if not target:
        raise InputError(text, f"nothing after {source.prefix + ':'!r}")
    if source.prefix == HUB_PREFIX and len([p for p in target.split("/") if p]) < 2:
        raise InputError(text, "expected hf-hub:ORG/REPO or hf-hub:ORG/REPO/PATH/IN/REPO")
    return WeightSource(source.prefix, target)


def hub_cache_dir() -> Path:
    """The Hugging Face cache folder in force (``HF_HUB_CACHE``), read when called."""
    import huggingface_hub.constants as hf_constants

    return Path(hf_constants.HF_HUB_CACHE)


def cached_hub_file(repo: str, filename: str) -> Path | None:
    """``filename`` of ``repo`` if it is already in the Hugging Face cache; never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(repo, filename)
    return Path(cached) if isinstance(cached, str) and Path(cached).is_file() else None


def cached_hub_folder(repo: str) -> Path | None:
    """The cached snapshot folder of ``repo`` (found through its config file), or None; never downloads."""
    for marker in ("config.json", "open_clip_config.json", "captioner.json", "terravl_config.json"):
        found = cached_hub_file(repo, marker)
        if found is not None:
            return found.parent
    return None
