"""Pure helpers of the federated app: settings, per-task aggregation, outputs, checkpoints.

Nothing here imports Flower (``tests/test_architecture.py``); ``server/``, ``client/`` and
``unicon_flower/`` (records, byte accounting, runners) translate Messages into calls to these
functions. Importing this package is cheap (no torch at import time).
"""
