"""Continual expansion: stages, the task x stage matrix (avg, BWT, forgetting), modality
expansion, and the baselines it is compared with. See ``docs/continual.md``."""
