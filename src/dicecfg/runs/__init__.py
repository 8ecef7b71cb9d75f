"""Run folders shared by every trainer: atomic files, ``run.json``, ``stats.jsonl``, checkpoints, guards."""
