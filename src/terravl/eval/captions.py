"""Score captions the coco-caption way: PTB tokenisation (Stanford CoreNLP 3.4.1, Java), then BLEU-1..4, METEOR,
ROUGE-L and CIDEr-D. BLEU/ROUGE-L/CIDEr-D come from TerraVL's fast path (identical values, see
:mod:`terravl.eval.caption_metrics`); METEOR and the tokenizer run the Java programs that pycocoevalcap ships.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from terravl.errors import TerraVLError
from terravl.eval.caption_metrics import fast_scores

PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...",
                ";"}
"""Tokens coco-caption drops after PTB tokenisation."""


class JavaMissingError(TerraVLError):
    """coco-caption's tokenizer and METEOR are Java programs."""


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaMissingError("Java is needed for coco-caption's PTB tokenizer and METEOR "
                               "(Debian: apt-get install default-jre-headless)")
    return java


def ptb_tokenize(captions: dict[object, list[str]]) -> dict[object, list[str]]:
    """coco-caption's PTBTokenizer: ``-preserveLines -lowerCase``, then punctuation tokens removed."""
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    jar = Path(ptb.__file__).with_name("stanford-corenlp-3.4.1.jar")
    keys = [k for k, v in captions.items() for _ in v]
    text = "\n".join(c.replace("\n", " ") for v in captions.values() for c in v)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
        fh.write(text)
        name = fh.name
    try:
        done = subprocess.run([_java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                               "-lowerCase", name], capture_output=True, check=True)
    except subprocess.CalledProcessError as exc:
        raise TerraVLError(f"PTB tokenizer failed: {exc.stderr.decode(errors='replace')[-400:]}") from exc
    finally:
        os.unlink(name)
    lines = done.stdout.decode("utf-8").split("\n")
    out: dict[object, list[str]] = {}
    for key, line in zip(keys, lines):
        out.setdefault(key, []).append(" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS))
    for key in captions:  # captions that were empty lines at the very end
        out.setdefault(key, [""] * len(captions[key]))
        out[key] += [""] * (len(captions[key]) - len(out[key]))
    return out


def meteor(gts: dict, res: dict) -> float:
    """METEOR 1.5 through pycocoevalcap (Java)."""
    _java()
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        del scorer  # its __del__ closes the Java process
    return float(score)


def score_captions(references: dict[object, list[str]], predictions: dict[object, str], with_meteor: bool = True,
                   implementation: str = "fast") -> dict[str, float]:
    """coco-caption scores of ``predictions`` (image id → caption) against ``references`` (image id → captions).

    ``implementation="reference"`` runs pycocoevalcap's own BLEU/ROUGE-L/CIDEr scorers instead of the fast path.
    """
    missing = [k for k in references if k not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no prediction, e.g. {missing[:3]}")
    gts = ptb_tokenize({k: list(references[k]) for k in references})
    res = ptb_tokenize({k: [predictions[k]] for k in references})
    if implementation == "fast":
        scores = fast_scores(gts, res)
    elif implementation == "reference":
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        b, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores = {"Bleu_1": b[0], "Bleu_2": b[1], "Bleu_3": b[2], "Bleu_4": b[3],
                  "ROUGE_L": Rouge().compute_score(gts, res)[0], "CIDEr": Cider().compute_score(gts, res)[0]}
    else:
        raise ValueError(f"implementation must be 'fast' or 'reference', got {implementation!r}")
    ordered = {k: float(scores[k]) for k in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")}
    if with_meteor:
        ordered["METEOR"] = meteor(gts, res)
    ordered["ROUGE_L"] = float(scores["ROUGE_L"])
    ordered["CIDEr"] = float(scores["CIDEr"])
    return ordered
