"""The Flower layer: what runs a federation (in-process runner, continual engine) on top of
the ServerApp (``server/``) and ClientApp (``client/``); ``unicon_core`` imports none of it."""
