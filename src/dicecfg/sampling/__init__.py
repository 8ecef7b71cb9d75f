"""Sampling: prompts -> the stock pipeline, one code path for every method (unguided, cfg, scaling, dice)."""
