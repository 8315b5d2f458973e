import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, so it must be set before fastgp.ops
# is imported. Without a GPU the Triton tests then run on CPU tensors through the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
