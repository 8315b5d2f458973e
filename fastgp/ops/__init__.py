"""The Triton backend: the functions of `fastgp.reference`, same signatures, fused kernels.

Each op is one file, read top-down (kernels, host launchers, torch.library registration):
`interpolate` (SPEC.md §2), `penalty` (§3), `normalize` (§4). `grad_norms` is not a fused op and
is the reference's. Every kernel runs under `TRITON_INTERPRET=1` on CPU tensors as well.
"""

from fastgp.ops.interpolate import interpolate
from fastgp.ops.normalize import normalize
from fastgp.ops.penalty import penalty_from_grad
from fastgp.reference import grad_norms

__all__ = ["grad_norms", "interpolate", "normalize", "penalty_from_grad"]
