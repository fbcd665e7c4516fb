"""Pure helpers of the federated app: settings, per-task aggregation, byte accounting, outputs.

Nothing here talks to Flower's network layer; ``server/`` and ``client/`` translate Messages into
calls to these functions. Importing this package is cheap (no torch at import time).
"""
