"""``terravl info``: what this installation has — version, device, threads, models found, sample data."""

from __future__ import annotations

import os
import platform

import click

from terravl import __version__, config
from terravl.cli.output import emit_json, format_option, table


def collect_info() -> dict:
    import rasterio

    info = {"version": __version__, "python": platform.python_version(), "gdal": rasterio.__gdal_version__,
            "rasterio": rasterio.__version__, "home": str(config.terravl_home()),
            "models_dir": str(config.models_dir()), "cpu_count": os.cpu_count()}
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads(),
                    device="cuda" if torch.cuda.is_available() else "cpu")
        if info["device"] == "cuda":
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info.update(torch=None, threads=os.cpu_count(), device="cpu")
    info["models"] = _models_found()
    info["samples"] = sorted(p.name for p in config.samples_dir().glob("*.tif"))
    shared = config.shared_dir()
    info["shared_data"] = str(shared) if shared else None
    return info


def _models_found() -> list[dict]:
    try:
        from terravl.models.registry import list_models
    except ImportError:
        folder = config.models_dir()
        files = sorted(p for p in folder.rglob("*") if p.suffix in {".pt", ".bin", ".safetensors", ".pth"}) \
            if folder.is_dir() else []
        return [{"name": p.stem, "file": str(p), "present": True} for p in files]
    return [m for m in list_models() if m["present"]]


def _label(model: dict) -> str:
    """A model's name, marked when it is not a dual encoder (captioners load with a different command)."""
    kind = model.get("kind", "encoder")
    return model["name"] if kind == "encoder" else f"{model['name']} ({kind})"


@click.command()
@format_option()
def info(fmt: str) -> None:
    """Show the version, compute device and threads, the models (encoders and captioners) whose weights are
    found, and sample data.

    \b
    Examples:
      terravl info
      terravl info --format json
    """
    result = collect_info()
    if fmt == "json":
        emit_json(result)
        return
    rows = [[k, v] for k, v in result.items() if k not in ("models", "samples")]
    rows.append(["models found", ", ".join(_label(m) for m in result["models"]) or
                 f"none (put checkpoints in {result['models_dir']})"])
    rows.append(["sample rasters", ", ".join(result["samples"])])
    table("TerraVL", ["", "value"], rows)
