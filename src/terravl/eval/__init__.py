"""Evaluation with the field's protocols and exact metrics: coco-caption scores, RS retrieval recalls, zero-shot
accuracy, RSVQA accuracy and change-captioning scores."""

from terravl.eval.caption_metrics import bleu, cider_d, fast_scores, prepare, rouge_l
from terravl.eval.captions import ptb_tokenize, score_captions
from terravl.eval.retrieval import retrieval_metrics
from terravl.eval.vqa import vqa_accuracy
from terravl.eval.zeroshot import RS_TEMPLATES, class_embeddings, classification_metrics

__all__ = ["RS_TEMPLATES", "bleu", "cider_d", "class_embeddings", "classification_metrics", "fast_scores",
           "prepare", "ptb_tokenize", "retrieval_metrics", "rouge_l", "score_captions", "vqa_accuracy"]
