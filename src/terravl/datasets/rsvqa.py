"""RSVQA (Lobry et al., TGRS 2020): visual question answering on Sentinel-2 (LR) and aerial (HR) images.

Each split is three JSON files sharing a prefix — ``LR_split_train_questions.json``, ``…_answers.json``,
``…_images.json`` (HR: ``USGS_split_train_…``; HR's second test set ``USGS_split_test_phili_…``) — holding
``{"questions": [{"id", "img_id", "type", "question", "answers_ids", "active"}]}``,
``{"answers": [{"id", "question_id", "answer", "active"}]}`` and ``{"images": [{"id", "questions_ids", "active"}]}``.
Only ``active`` entries count, as in the official loaders. Images are ``Images_LR/<id>.tif`` (or ``Data/``).
Question types: LR presence, comparison, rural_urban, count; HR presence, comparison, count, area.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from terravl.datasets.jsonfile import load_json
from terravl.datasets.records import DatasetReader, VQARecord
from terravl.errors import DatasetFormatError

_QUESTIONS = re.compile(r"^(?P<prefix>.+_split_(?P<split>[a-z_]+))_questions\.json$")


def split_prefixes(folder: Path) -> list[tuple[str, str]]:
    """(split, prefix) for every ``<prefix>_questions.json`` with its answers and images files beside it."""
    found = []
    if not folder.is_dir():
        return found
    for file in sorted(folder.glob("*_questions.json")):
        match = _QUESTIONS.match(file.name)
        if match and all((folder / f"{match['prefix']}_{k}.json").is_file() for k in ("answers", "images")):
            found.append((match["split"], match["prefix"]))
    return found


class RSVQA(DatasetReader):
    """Records: :class:`VQARecord`, one per active question."""

    format = "rsvqa"
    description = "RSVQA LR/HR: <prefix>_questions.json, _answers.json, _images.json per split"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return bool(split_prefixes(path))

    def _load(self) -> None:
        prefixes = split_prefixes(self.path)
        if not prefixes:
            raise DatasetFormatError(self.path, "no RSVQA <prefix>_questions/_answers/_images.json triple found")
        self.image_ids: dict[str, set[int]] = {}
        image_dir = next((self.path / d for d in ("Images_LR", "Images_HR", "Data", "Images", "images")
                          if (self.path / d).is_dir()), None)
        for split, prefix in prefixes:
            self._load_split(split, prefix, image_dir)

    def _entries(self, prefix: str, kind: str) -> list:
        file = self.path / f"{prefix}_{kind}.json"
        data = load_json(file)
        entries = data.get(kind) if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise DatasetFormatError(file, f"expected an object with a '{kind}' list")
        return entries

    def _load_split(self, split: str, prefix: str, image_dir: Path | None) -> None:
        answers: dict[int, str] = {}
        for index, item in enumerate(self._entries(prefix, "answers")):
            if not isinstance(item, dict) or "answer" not in item or "id" not in item:
                self.problem(f"{self.path / (prefix + '_answers.json')}#answers[{index}]", "missing 'id' or 'answer'")
                continue
            if item.get("active", True):
                answers[int(item["id"])] = str(item["answer"])
        images = set()
        for index, item in enumerate(self._entries(prefix, "images")):
            if isinstance(item, dict) and "id" in item and item.get("active", True):
                images.add(int(item["id"]))
        self.image_ids[split] = set()
        qfile = self.path / f"{prefix}_questions.json"
        for index, item in enumerate(self._entries(prefix, "questions")):
            where = f"{qfile}#questions[{index}]"
            if not isinstance(item, dict):
                self.problem(where, "entry is not an object")
                continue
            if not item.get("active", True):
                continue
            missing = [k for k in ("id", "img_id", "type", "question", "answers_ids") if k not in item]
            if missing:
                self.problem(where, f"missing field(s): {', '.join(missing)}")
                continue
            answer_ids = item["answers_ids"] if isinstance(item["answers_ids"], list) else [item["answers_ids"]]
            answer = next((answers[int(a)] for a in answer_ids if int(a) in answers), None)
            if answer is None:
                self.problem(where, f"no active answer among answers_ids {answer_ids}")
                continue
            img_id = int(item["img_id"])
            if images and img_id not in images:
                self.problem(where, f"img_id {img_id} is not an active image of {prefix}_images.json")
                continue
            path = _image_path(image_dir, img_id)
            self.records.append(VQARecord(int(item["id"]), img_id, str(item["question"]), answer, str(item["type"]),
                                          split, path))
            self.image_ids[split].add(img_id)

    def summary(self) -> dict:
        base = super().summary()
        base["splits"] = {s: len(ids) for s, ids in sorted(self.image_ids.items())}
        return base

    def extra_summary(self) -> dict:
        questions = Counter(r.split for r in self.records)
        types = Counter(r.question_type for r in self.records)
        return {"questions": dict(sorted(questions.items())), "question_types": dict(sorted(types.items()))}


def _image_path(image_dir: Path | None, img_id: int) -> Path | None:
    if image_dir is None:
        return None
    for suffix in (".tif", ".png", ".jpg"):
        path = image_dir / f"{img_id}{suffix}"
        if path.is_file():
            return path
    return None
