"""Where a test runs: the CPU always, a GPU only where one is visible (CI has none; the GPU
cases run in a GPU session, see BENCHMARKS.md *gpu* and ``simulations/gpu_session.sh``)."""

from __future__ import annotations

import pytest
import torch

#: Skips a test (or a parameter) where no CUDA GPU is visible.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
#: ``device`` parameters of a test that runs on the CPU and, where one is visible, on a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
