"""Readers for what ``terravl datasets build`` writes, so that ``terravl datasets inspect`` (and the trainers, which
open data through the same readers) understand both outputs:

* ``terravl-captions``: a built caption set (Karpathy JSON beside its ``card.json``): read as caption JSON, with the
  card's objects per tile, skipped tiles and filter statistics added to the summary;
* ``llava-instructions``: conversation JSON in the LLaVA layout (a list of ``{"id", "image", "conversations"}``),
  one file or a folder of ``llava_<split>.json``; each malformed conversation is a problem naming its index.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from terravl.datasets.jsonfile import load_json
from terravl.datasets.karpathy import KarpathyCaptions, find_caption_json
from terravl.datasets.records import DatasetReader
from terravl.errors import DatasetFormatError


def _card(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class BuiltCaptions(KarpathyCaptions):
    """A caption set built by ``terravl datasets build captions``. Records: :class:`CaptionRecord`."""

    format = "terravl-captions"
    description = "caption set built by `terravl datasets build captions` (captions.json + card.json)"

    @classmethod
    def detect(cls, path: Path) -> bool:
        file = find_caption_json(path)
        if file is None:
            return False
        card = _card(file.parent)
        return card is not None and card.get("card") == "terravl-captions"

    def extra_summary(self) -> dict:
        summary = super().extra_summary()
        card = _card(self.file.parent) or {}
        summary["tiles_seen"] = card.get("tiles_seen")
        summary["objects (tiles)"] = {k: v.get("tiles") for k, v in (card.get("tags") or {}).items()}
        summary["skipped tiles"] = card.get("skipped_tiles") or {}
        if card.get("filter"):
            f = card["filter"]
            summary["filter"] = {"model": f.get("model"), "min_score": f.get("min_score"),
                                 "captions_dropped": f.get("captions_dropped"), "tiles_dropped": f.get("tiles_dropped")}
        summary["vector files"] = len(card.get("vectors") or [])
        summary["rasters"] = len(card.get("rasters") or [])
        return summary


@dataclass(frozen=True)
class InstructionRecord:
    """One conversation about one image: its id, image file, split, number of answers and their types."""

    id: str
    path: Path | None
    split: str
    turns: int
    turn_types: tuple[str, ...] = ()
    label: str | None = None


def _peek_conversations(path: Path) -> bool:
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return head.lstrip().startswith("[") and '"conversations"' in head


class LlavaInstructions(DatasetReader):
    """Conversation JSON (LLaVA layout). Records: :class:`InstructionRecord`."""

    format = "llava-instructions"
    description = "conversation JSON in the LLaVA layout: [{id, image, conversations: [{from, value}]}]"

    @classmethod
    def detect(cls, path: Path) -> bool:
        if path.is_dir():
            return any(_peek_conversations(p) for p in sorted(path.glob("*.json")))
        return _peek_conversations(path)

    def _load(self) -> None:
        files = [p for p in sorted(self.path.glob("*.json")) if _peek_conversations(p)] if self.path.is_dir() \
            else [self.path]
        if not files:
            raise DatasetFormatError(self.path, "no LLaVA conversation JSON found")
        self.images_found = 0
        for file in files:
            data = load_json(file)
            if not isinstance(data, list):
                raise DatasetFormatError(file, "expected a list of conversations")
            default_split = file.stem[len("llava_"):] if file.stem.startswith("llava_") else "all"
            for index, item in enumerate(data):
                record = self._record(item, f"{file}#{index}", file.parent, default_split)
                if record is not None:
                    self.records.append(record)
                    self.images_found += record.path is not None and record.path.is_file()

    def _record(self, item: object, where: str, folder: Path, default_split: str) -> InstructionRecord | None:
        if not isinstance(item, dict):
            self.problem(where, "entry is not an object")
            return None
        turns = item.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2:
            self.problem(where, "missing 'conversations' (at least one human and one gpt turn)")
            return None
        for i, turn in enumerate(turns):
            expected = "human" if i % 2 == 0 else "gpt"
            if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str) \
                    or not turn["value"].strip():
                self.problem(f"{where}.conversations[{i}]", f"expected a non-empty '{expected}' turn")
                return None
        image = item.get("image")
        path = None
        if isinstance(image, str) and image:
            path = (folder / image) if not Path(image).is_absolute() else Path(image)
            if "<image>" not in turns[0]["value"]:
                self.problem(where, "has an image but its first human turn has no <image> token")
        types = item.get("turn_types")
        types = tuple(str(t) for t in types) if isinstance(types, list) else ()
        return InstructionRecord(str(item.get("id", where)), path, str(item.get("split") or default_split),
                                 len(turns) // 2, types, item.get("class") if isinstance(item.get("class"), str)
                                 else None)

    def extra_summary(self) -> dict:
        types: Counter = Counter(t for r in self.records for t in r.turn_types)
        return {"conversations": len(self.records), "turns": sum(r.turns for r in self.records),
                "images_found": self.images_found, "turn types": dict(sorted(types.items()))}
