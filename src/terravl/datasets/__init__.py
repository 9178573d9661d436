"""Readers for the standard remote-sensing vision-language datasets, yielding typed records.

Formats: scene-classification class folders (UCM, AID, RESISC45, EuroSAT, WHU-RS19, PatternNet); Karpathy caption
JSON (UCM-Captions, Sydney-Captions, RSICD, RSITMD); RS retrieval split files; RSVQA LR/HR; LEVIR-CC; LEVIR-CD;
and what ``terravl datasets build`` writes (built caption sets, LLaVA conversation JSON).
"""

from terravl.datasets.builder.readers import BuiltCaptions, InstructionRecord, LlavaInstructions
from terravl.datasets.inspect import detect_format, inspect_dataset, open_dataset
from terravl.datasets.karpathy import KarpathyCaptions
from terravl.datasets.levir_cc import LevirCC
from terravl.datasets.levir_cd import LevirCD
from terravl.datasets.records import (CaptionRecord, ChangePairRecord, DatasetReader, ImageRecord, Problem,
                                      VQARecord)
from terravl.datasets.retrieval_splits import RetrievalSplits
from terravl.datasets.rsvqa import RSVQA
from terravl.datasets.scene_folders import SceneFolderDataset
from terravl.datasets import inspect as _inspect
from terravl.datasets.rrsis import RRSISDataset
from terravl.datasets.rsvg import GroundingRecord, RSVGDataset

if RRSISDataset not in _inspect.READERS:  # grounding sets (issue 16), tried before the catch-all class folders
    _at = _inspect.READERS.index(SceneFolderDataset)
    _inspect.READERS = _inspect.READERS[:_at] + (RRSISDataset, RSVGDataset) + _inspect.READERS[_at:]
READERS = _inspect.READERS

__all__ = ["READERS", "RRSISDataset", "RSVGDataset", "GroundingRecord", "RSVQA", "BuiltCaptions", "CaptionRecord",
           "ChangePairRecord", "DatasetReader", "ImageRecord",
           "InstructionRecord", "KarpathyCaptions", "LevirCC", "LevirCD", "LlavaInstructions", "Problem",
           "RetrievalSplits", "SceneFolderDataset", "VQARecord", "detect_format", "inspect_dataset", "open_dataset"]
