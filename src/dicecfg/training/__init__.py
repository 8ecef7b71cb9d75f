"""Training: prompts or captioned images -> ``distill`` -> a sharpener (CFG-supervised distillation)."""
