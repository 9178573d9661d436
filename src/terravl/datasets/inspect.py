"""Detect a dataset's format and summarise it: what ``terravl datasets inspect`` prints."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from terravl.datasets.builder.readers import BuiltCaptions, LlavaInstructions
from terravl.datasets.karpathy import KarpathyCaptions
from terravl.datasets.levir_cc import LevirCC
from terravl.datasets.levir_cd import LevirCD
from terravl.datasets.records import DatasetReader, Problem
from terravl.datasets.retrieval_splits import RetrievalSplits
from terravl.datasets.rsvqa import RSVQA
from terravl.datasets.scene_folders import SceneFolderDataset
from terravl.errors import DatasetFormatError
from terravl.paths import missing_reason

READERS: tuple[type[DatasetReader], ...] = (LlavaInstructions, BuiltCaptions, LevirCC, RetrievalSplits,
                                           KarpathyCaptions, RSVQA, LevirCD, SceneFolderDataset)
"""Tried in this order; the first whose ``detect`` accepts the path reads it."""


def reader_for(name: str) -> type[DatasetReader]:
    for reader in READERS:
        if reader.format == name:
            return reader
    raise DatasetFormatError(name, f"unknown dataset format; choose one of {', '.join(r.format for r in READERS)}")


def detect_format(path: str | Path) -> type[DatasetReader]:
    """The reader class for ``path``; :class:`DatasetFormatError` lists the formats tried when none fits."""
    path = Path(path)
    if not path.exists():
        raise DatasetFormatError(path, "no such file or folder")
    for reader in READERS:
        if reader.detect(path):
            return reader
    raise DatasetFormatError(path, "format not recognised; supported: " +
                             "; ".join(f"{r.format} ({r.description})" for r in READERS))


def open_dataset(path: str | Path, format: str | None = None, split: str | None = None) -> DatasetReader:
    """Read the dataset at ``path`` (format detected unless given), optionally keeping one split."""
    reader = reader_for(format) if format else detect_format(path)
    return reader(path, split=split)


def inspect_dataset(path: str | Path, format: str | None = None, check_images: bool = True, deep: bool = False,
                    progress: Callable[[Iterable], Iterable] | None = None) -> dict:
    """Summary of a dataset: ``format``, ``splits``, ``classes``, ``problems`` (and per-format counts).

    With ``check_images`` every image file the dataset names is opened (header only, or fully decoded with
    ``deep``); each one that is missing or fails is added to ``problems``, so ``images_checked`` counts every
    image named and ``problems`` every one of them that could not be used.
    """
    dataset = open_dataset(path, format)
    summary = dataset.summary()
    if check_images:
        paths = list(_image_paths(dataset))
        problems = check_image_files(progress(paths) if progress else paths, deep=deep)
        unfound = [r for r in dataset if hasattr(r, "captions") and getattr(r, "path", "") is None] if paths else []
        # some images are here, so each one named that is not is a problem (a caption-only copy has none at all)
        problems += [Problem(f"{dataset.path}#{r.filename}", "image file not found") for r in unfound]
        summary["images_checked"] = len(paths) + len(unfound)
        summary["problems"] += [p.to_dict() for p in problems]
    return summary


def _image_paths(dataset: DatasetReader) -> Iterable[Path]:
    """Every image file the records name (missing ones too: checking reports them), each once."""
    seen: set[Path] = set()
    for record in dataset:
        for attr in ("path", "before", "after", "mask"):
            value = getattr(record, attr, None)
            if isinstance(value, Path) and value not in seen:
                seen.add(value)
                yield value


def check_image_files(paths: Iterable[Path], deep: bool = False) -> list[Problem]:
    """Open each image; return a :class:`Problem` for each that is unreadable (or fails to decode, if deep)."""
    from terravl.errors import InputError
    from terravl.io.raster import PILLOW_SUFFIXES, open_pillow, read_image

    problems = []
    for path in paths:
        if not path.is_file():
            problems.append(Problem(str(path), missing_reason(path)))
            continue
        try:
            if deep or path.suffix.lower() not in PILLOW_SUFFIXES:
                if deep:
                    read_image(path)
                else:
                    from terravl.io.raster import raster_info

                    raster_info(path)
            else:
                with open_pillow(str(path)) as img:
                    img.size  # noqa: B018 - header parse
        except InputError as exc:
            problems.append(Problem(str(path), exc.message))
        except Exception as exc:  # noqa: BLE001
            problems.append(Problem(str(path), f"unreadable image ({exc.__class__.__name__}: {exc})"))
    return problems
