"""Readers for the standard remote-sensing vision-language datasets, yielding typed records.

Formats: scene-classification class folders (UCM, AID, RESISC45, EuroSAT, WHU-RS19, PatternNet); Karpathy caption
JSON (UCM-Captions, Sydney-Captions, RSICD, RSITMD); RS retrieval split files; RSVQA LR/HR; LEVIR-CC; LEVIR-CD.
"""

from terravl.datasets.inspect import READERS, detect_format, inspect_dataset, open_dataset
from terravl.datasets.karpathy import KarpathyCaptions
from terravl.datasets.levir_cc import LevirCC
from terravl.datasets.levir_cd import LevirCD
from terravl.datasets.records import (CaptionRecord, ChangePairRecord, DatasetReader, ImageRecord, Problem,
                                      VQARecord)
from terravl.datasets.retrieval_splits import RetrievalSplits
from terravl.datasets.rsvqa import RSVQA
from terravl.datasets.scene_folders import SceneFolderDataset

__all__ = ["READERS", "RSVQA", "CaptionRecord", "ChangePairRecord", "DatasetReader", "ImageRecord",
           "KarpathyCaptions", "LevirCC", "LevirCD", "Problem", "RetrievalSplits", "SceneFolderDataset",
           "VQARecord", "detect_format", "inspect_dataset", "open_dataset"]
