"""LEVIR-CC (Liu et al., TGRS 2022): change captioning on bi-temporal building imagery.

``LevirCCcaptions.json`` holds ``{"images": [{"filename", "filepath", "split", "imgid", "changeflag",
"sentences": [{"raw", …}]}]}``; images are ``images/<split>/A/<filename>`` (before) and ``…/B/<filename>``
(after). ``changeflag`` is 1 when the pair shows a change; no-change pairs carry captions such as "the scene is the
same as before". 10,077 pairs, 5 captions each, split 6,815 / 1,333 / 1,929.
"""

from __future__ import annotations

from pathlib import Path

from terravl.datasets.jsonfile import load_json, peek_json_images
from terravl.datasets.records import ChangePairRecord, DatasetReader
from terravl.errors import DatasetFormatError


def find_change_json(path: Path) -> Path | None:
    if path.is_file():
        first = peek_json_images(path)
        return path if first is not None and "changeflag" in first else None
    if path.is_dir():
        preferred = path / "LevirCCcaptions.json"
        if preferred.is_file() and find_change_json(preferred):
            return preferred
        found = [p for p in sorted(path.glob("*.json")) if find_change_json(p)]
        return found[0] if len(found) == 1 else None
    return None


class LevirCC(DatasetReader):
    """Records: :class:`ChangePairRecord` with captions and the ``changed`` flag."""

    format = "levir-cc"
    description = "LEVIR-CC change captions: LevirCCcaptions.json + images/<split>/{A,B}/"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return find_change_json(path) is not None

    def _load(self) -> None:
        file = find_change_json(self.path) if self.path.is_dir() else self.path
        if file is None:
            raise DatasetFormatError(self.path, "no LEVIR-CC caption JSON (images[] with changeflag) found")
        data = load_json(file)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DatasetFormatError(file, "expected an object with an 'images' list")
        root = file.parent
        self.images_found = 0
        for index, item in enumerate(data["images"]):
            where = f"{file}#images[{index}]"
            if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
                self.problem(where, "missing 'filename'")
                continue
            if item.get("changeflag") not in (0, 1, True, False, "0", "1"):
                self.problem(where, f"'changeflag' must be 0 or 1, got {item.get('changeflag')!r}")
                continue
            sentences = item.get("sentences")
            if not isinstance(sentences, list) or not sentences:
                self.problem(where, "missing or empty 'sentences' list")
                continue
            captions = tuple(s.get("raw", "").strip() if isinstance(s, dict) else str(s).strip() for s in sentences)
            captions = tuple(c for c in captions if c)
            split = str(item.get("split") or item.get("filepath") or "all")
            folder = root / "images" / str(item.get("filepath") or split)
            before, after = folder / "A" / item["filename"], folder / "B" / item["filename"]
            if before.is_file() and after.is_file():
                self.images_found += 1
            self.records.append(ChangePairRecord(Path(item["filename"]).stem, before, after, split, captions,
                                                 bool(int(item["changeflag"]))))

    def extra_summary(self) -> dict:
        changed = sum(1 for r in self.records if r.changed)
        return {"pairs": len(self.records), "changed": changed, "unchanged": len(self.records) - changed,
                "captions": sum(len(r.captions) for r in self.records), "pairs_found": self.images_found}
