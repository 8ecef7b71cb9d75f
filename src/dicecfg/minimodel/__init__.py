"""The recipe of the shipped mini model: a small StableDiffusionPipeline trained on the shapes world."""
