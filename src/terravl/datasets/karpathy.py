"""Caption datasets in Karpathy-style JSON: UCM-Captions, Sydney-Captions, RSICD, RSITMD (and RSICD on AID).

Layout: ``{"images": [{"filename", "split", "sentences": [{"raw", …}], "imgid"?, "filepath"?, "class"?}]}``.
``sentences`` may also be plain strings (the ``captions.json`` files derived from the AMFMN splits). Image files
are looked up under ``filepath`` relative to the JSON's folder or its parent, or under ``image_root``.
"""

from __future__ import annotations

from pathlib import Path

from terravl.datasets.jsonfile import ImageLocator, load_json, peek_json_images
from terravl.datasets.records import CaptionRecord, DatasetReader
from terravl.errors import DatasetFormatError


def find_caption_json(path: Path) -> Path | None:
    """``path`` if it is Karpathy caption JSON, or the single such JSON file inside a folder."""
    if path.is_file():
        first = peek_json_images(path)
        return path if first is not None and "sentences" in first and "changeflag" not in first else None
    if path.is_dir():
        found = [p for p in sorted(path.glob("*.json")) if find_caption_json(p)]
        return found[0] if len(found) == 1 else None
    return None


class KarpathyCaptions(DatasetReader):
    """Image–caption pairs with the official split. Records: :class:`CaptionRecord`."""

    format = "karpathy-captions"
    description = "caption JSON (UCM-Captions, Sydney-Captions, RSICD, RSITMD): images[].filename/split/sentences"

    def __init__(self, path: str | Path, split: str | None = None, image_root: str | Path | None = None):
        self.image_root = Path(image_root) if image_root else None
        super().__init__(path, split)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return find_caption_json(path) is not None

    def _load(self) -> None:
        file = find_caption_json(self.path) if self.path.is_dir() else self.path
        if file is None:
            raise DatasetFormatError(self.path, "no Karpathy caption JSON (images[].filename/sentences) found")
        self.file = file
        data = load_json(file)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DatasetFormatError(file, "expected an object with an 'images' list")
        self.name = str(data.get("dataset") or file.stem)
        locator = ImageLocator(file, self.image_root)
        self.images_found = 0
        for index, item in enumerate(data["images"]):
            where = f"{file}#images[{index}]"
            record = self._record(item, index, where, locator)
            if record is not None:
                self.records.append(record)
                self.images_found += record.path is not None

    def _record(self, item: object, index: int, where: str, locator: ImageLocator) -> CaptionRecord | None:
        if not isinstance(item, dict):
            self.problem(where, "entry is not an object")
            return None
        filename = item.get("filename")
        if not isinstance(filename, str) or not filename:
            self.problem(where, "missing or empty 'filename'")
            return None
        sentences = item.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            self.problem(where, "missing or empty 'sentences' list")
            return None
        captions = []
        for s_index, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else sentence
            if not isinstance(raw, str) or not raw.strip():
                self.problem(f"{where}.sentences[{s_index}]", "empty or missing caption text (skipped)")
                continue
            captions.append(raw.strip())
        if not captions:
            self.problem(where, "no usable caption (image kept, with no captions)")
        split = item.get("split") or "all"
        image_id = item.get("imgid", index)
        filepath = item.get("filepath") or ""
        path = locator.find(filename, filepath if isinstance(filepath, str) else "")
        label = item.get("class") if isinstance(item.get("class"), str) else None
        tags = item.get("labels")
        if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
            self.problem(f"{where}.labels", "expected a list of label names (labels ignored)")
            tags = None
        return CaptionRecord(int(image_id), filename, str(split), tuple(captions), path, label,
                             tuple(t.strip() for t in tags or () if t.strip()))

    def extra_summary(self) -> dict:
        return {"dataset": self.name, "images": len(self.records),
                "captions": sum(len(r.captions) for r in self.records), "images_found": self.images_found}
