"""Training: contrastive (CLIP-style) training and fine-tuning of dual encoders on the field's datasets."""
