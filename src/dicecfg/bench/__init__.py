"""Sampling speed of CFG versus DICE, on real models or random full-size architectures."""
