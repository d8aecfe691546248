"""Test-session settings."""

from __future__ import annotations

import os

import torch

# Under pytest-xdist every worker would otherwise start one torch thread per core, and the
# oversubscribed workers run many times slower. One thread per worker.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
