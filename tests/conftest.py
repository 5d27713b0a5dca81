"""Test-suite settings shared by tests/core and tests/app."""

import torch

# The suite's matrices are small: one thread is as fast, deterministic, and keeps
# the tests from thrashing when other jobs share the 2-core machine.
torch.set_num_threads(1)
