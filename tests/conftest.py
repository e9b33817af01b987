"""Shared test setup: deterministic, small, CPU."""

import os

os.environ.setdefault("BUILD_NO_CUDA", "1")  # never let gsplat try to compile CUDA code during tests
