import os
import random

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, so it must be set before fastgp.ops
# is imported. Without a GPU the Triton tests then run on CPU tensors through the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def fresh_seed() -> int:
    """Fresh random inputs every run; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("FASTGP_TEST_SEED", random.randrange(2**31)))
    torch.manual_seed(seed)
    print(f"FASTGP_TEST_SEED={seed}")
    return seed
