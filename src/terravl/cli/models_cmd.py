"""``terravl models``: which dual encoders and captioners TerraVL knows, whether their weights are on disk, and
fetching them."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from terravl import config
from terravl.errors import TerraVLError
from terravl.cli.output import emit_json, format_option, stderr, table


@click.group()
def models() -> None:
    """List and fetch model weights (TerraVL itself never downloads: only `models pull` does, when you run it)."""


@models.command("list")
@format_option()
def list_cmd(fmt: str) -> None:
    """Show every registered model (kind: encoder, captioner, change detector, grounder or router), its architecture, the file it needs and
    whether that file is present.

    \b
    Weights are looked up in this order: an explicit path, the package (shipped models),
    $TERRAVL_HOME/models/<file> (default ~/.cache/terravl/models), then the Hugging Face cache
    (files already there only). Captioner folders in $TERRAVL_HOME/models are listed too.
    Models load by name or by prefixed source: terravl:NAME, file:PATH, hf-hub:ORG/REPO[/FILE].

    \b
    Examples:
      terravl models list
      terravl models list --format json
    """
    from terravl.models import list_models
    from terravl.router.model import routers

    rows = list_models(tuple(routers().values()))
    if fmt == "json":
        emit_json([{k: r[k] for k in ("name", "kind", "family", "arch", "file", "present", "path")} for r in rows])
        return
    table(f"models (looked up in {config.models_dir()})", ["name", "kind", "arch", "file", "present"],
          [[r["name"], r["kind"], r["arch"], r["file"], "yes" if r["present"] else "no"] for r in rows])


@models.command()
@click.argument("name")
@format_option()
def pull(name: str, fmt: str) -> None:
    """Download NAME's published checkpoint into $TERRAVL_HOME/models (needs internet; nothing else downloads).

    \b
    Example:
      terravl models pull remoteclip-vit-b-32
    """
    from terravl.models.registry import WeightsNotFoundError, lookup

    cfg = lookup(name)
    if cfg.shipped:
        raise click.UsageError(f"{name} ships inside the terravl package; nothing to pull")
    if not cfg.hf_repo or not cfg.hf_filename:
        raise WeightsNotFoundError(name, f"no Hugging Face repository is known for it: download {cfg.file!r} from "
                                         f"{cfg.source} and put it at {config.models_dir() / cfg.file}")
    from huggingface_hub import hf_hub_download

    target = config.models_dir() / cfg.file
    stderr.print(f"downloading {cfg.hf_repo}/{cfg.hf_filename} …")
    try:
        cached = Path(hf_hub_download(cfg.hf_repo, cfg.hf_filename))  # explicit, user-requested download
    except OSError as exc:  # offline, unreachable or refused: huggingface_hub's errors are all OSErrors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TerraVLError(f"could not download {cfg.hf_repo}/{cfg.hf_filename} ({reason}); without internet, fetch "
                           f"{cfg.file!r} elsewhere (from {cfg.source}) and put it at {target}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, target)
    result = {"name": name, "path": str(target), "bytes": target.stat().st_size}
    if fmt == "json":
        emit_json(result)
    else:
        stderr.print(f"{name}: {target} ({result['bytes'] / 1e6:.0f} MB)")
