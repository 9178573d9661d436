"""Write the "class-prior caption" baseline for a Karpathy caption split: every test image gets the caption written
most often for training images of its own scene class (an oracle on the class label, blind to the image itself).

    python benchmarks/class_caption_baseline.py ../shared/data/rsicd_aid/dataset_rsicd_aid.json out/class_prior.json
    terravl eval caption --dataset ../shared/data/rsicd_aid/dataset_rsicd_aid.json --predictions out/class_prior.json

It is the floor a captioner must clear to show it reads the image and not just its class.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path


def main(dataset: str, out: str, split: str = "test") -> None:
    images = json.loads(Path(dataset).read_text())["images"]
    per_class: dict[str, Counter] = defaultdict(Counter)
    for image in images:
        if image["split"] == "train":
            per_class[image["class"]].update(s["raw"].strip() for s in image["sentences"])
    preds = [{"image_id": i["imgid"], "caption": per_class[i["class"]].most_common(1)[0][0]}
             for i in images if i["split"] == split]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(preds, indent=1))
    print(f"{len(preds)} predictions → {out}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:3])
