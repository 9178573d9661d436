"""A word-level tokenizer for TerraVL's own small decoder, built with Hugging Face ``tokenizers`` from the training
captions. Remote-sensing captions use about two thousand distinct words, so whole words are the natural unit:
the embedding table stays small and every generated token is a real word. It saves and loads as a normal
``PreTrainedTokenizerFast`` (``AutoTokenizer.from_pretrained(folder)``)."""

from __future__ import annotations

import re
from typing import Iterable

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def train_word_tokenizer(texts: Iterable[str], min_frequency: int = 2):
    """A lower-casing word-level tokenizer (punctuation split off) over ``texts``; rarer words map to ``<unk>``."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    trainer = WordLevelTrainer(min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS.values()))
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def tidy(text: str) -> str:
    """Generated text for people: single spaces, no space before punctuation."""
    text = " ".join(text.split())
    return re.sub(r"\s+([.,;:!?])", r"\1", text).strip()
