"""unicon core library: the modular foundation model, its skills, data, training and metrics.

Importing this package is cheap on purpose (no torch/monai/peft at import time), so Flower
processes that only need configuration start fast; import submodules for the heavy parts.
"""

__version__ = "0.1.0"
