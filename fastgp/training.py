"""Helpers for putting a gradient penalty into a real training loop.

`LazyRegularizer` is StyleGAN2's lazy regularisation. `check_critic` is what `gradient_penalty`,
`input_grad` and `normalized` run on the critic after differentiating it: a warning for BatchNorm in
training mode, and, on the first call for each critic, one probe of the double backward that turns
PyTorch's "derivative ... is not implemented" (raised much later, inside the user's `.backward()`)
into an immediate error that names the workaround.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

CHECK_ENV_VAR = "FASTGP_CHECK_DOUBLE_BACKWARD"


class LazyRegularizer:
    """Lazy regularisation (Karras et al. 2020, StyleGAN2 §3.1 and Appendix B): apply the penalty
    only every `every` steps, multiplied by `every`, so that its expected gradient per step is
    unchanged: ``Σ_{t<k} [t ≡ 0 mod k] · k · ∇P = k · ∇P``.

    >>> lazy = LazyRegularizer(every=16)
    >>> loss = d_loss + (lazy(fastgp.gradient_penalty(D, real, preset="r1")) if lazy.due(step) else 0)
    """

    def __init__(self, every: int) -> None:
        if isinstance(every, bool) or not isinstance(every, int):
            raise TypeError(f"every must be an int, got {type(every).__name__}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every

    def due(self, step: int) -> bool:
        """Whether step `step` (counted from 0) regularises: ``step % every == 0``."""
        return step % self.every == 0

    def __call__(self, penalty: Tensor) -> Tensor:
        """The penalty of a regularising step, ``every · P``."""
        return penalty * self.every

    def adam_hparams(self, lr: float, betas: tuple[float, float]) -> tuple[float, tuple[float, float]]:
        """StyleGAN2's correction for a separate regularisation step (its ``training_loop.py``):
        with ``c = k / (k + 1)``, ``lr · c`` and ``betas ** c``, because the optimiser then takes
        ``k + 1`` steps where it used to take ``k``. Not needed when the penalty is added to the
        main loss of the same step (one optimiser step either way)."""
        c = self.every / (self.every + 1)
        return lr * c, (betas[0] ** c, betas[1] ** c)

    def __repr__(self) -> str:
        return f"LazyRegularizer(every={self.every})"


# What the first call learnt about each critic (a module, a function, the module of a bound method):
# its BatchNorm layers, and whether its double backward was probed. Held weakly, so that a
# discarded critic is forgotten; every later call is one lookup here.
_critics: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Critics that cannot be keyed (a fresh lambda every step, an unhashable callable) are recognised by
# the leaves their graph reaches. Tensors compare elementwise, so leaves are held by id, with the
# tensor to rule out a reused id.
_probed_leaves: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_warned: weakref.WeakSet = weakref.WeakSet()


@dataclass
class _Critic:
    batchnorms: tuple[tuple[str, _BatchNorm], ...]
    probed: bool = False


def check_critic(D: Callable[..., Any], x: Tensor, grad: Tensor) -> None:
    """Run by the public functions on a critic they have just differentiated at `x` (``grad = ∂f/∂x``
    with its graph): warn about BatchNorm in training mode, and probe the double backward once.

    Set ``FASTGP_CHECK_DOUBLE_BACKWARD=0`` to skip the probe (it costs one extra double backward on
    the first call for each critic).
    """
    # Not getattr(D, "__self__", D) on a module: nn.Module.__getattr__ makes a miss cost microseconds.
    owner = D if isinstance(D, nn.Module) else getattr(D, "__self__", D)
    try:
        known = _critics.get(owner)
    except TypeError:  # unhashable, or not weakly referenceable
        known = None
    if known is None:
        known = _first_sight(owner)
    if known.batchnorms:
        _warn_batchnorm(owner, known.batchnorms)
    if not known.probed and grad.grad_fn is not None and os.environ.get(CHECK_ENV_VAR, "1") != "0":
        _probe_double_backward(x, grad)
        known.probed = True


def _first_sight(owner: object) -> _Critic:
    """The BatchNorm layers of a module critic (walked once: D.train()/D.eval() flip only their flags)."""
    layers = ()
    if isinstance(owner, nn.Module):
        layers = tuple((n, m) for n, m in owner.named_modules() if isinstance(m, _BatchNorm))
    known = _Critic(layers)
    with contextlib.suppress(TypeError):
        _critics[owner] = known
    return known


def _warn_batchnorm(D: object, layers: tuple[tuple[str, _BatchNorm], ...]) -> None:
    training = [n or type(m).__name__ for n, m in layers if m.training]
    if not training or D in _warned:
        return
    _warned.add(D)
    warnings.warn(
        f"fastgp: the critic has BatchNorm layers in training mode ({', '.join(training[:3])}"
        f"{', ...' if len(training) > 3 else ''}). Batch statistics mix the samples, so ∂f_i/∂x_i is not a "
        "per-sample gradient and the penalty is not the paper's. Workaround: evaluate the penalty with "
        "D.eval() (and D.train() afterwards), or use GroupNorm, LayerNorm or no normalisation in the critic "
        "(Gulrajani et al. 2017 §4 recommend layer normalisation).",
        UserWarning,
        stacklevel=5,
    )


def _leaves(grad: Tensor) -> list[Tensor]:
    """The leaf tensors (parameters, inputs) that `grad`'s graph reaches."""
    leaves, seen, stack = [], set(), [grad.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if isinstance(variable, Tensor):
            leaves.append(variable)
        stack.extend(fn for fn, _ in node.next_functions)
    return leaves


def _probe_double_backward(x: Tensor, grad: Tensor) -> None:
    """Differentiate `grad` once more (unless its leaves were probed already), or raise the workaround."""
    leaves = _leaves(grad)
    # The input is a fresh leaf every step: what identifies an unkeyable critic is everything else.
    others = [t for t in leaves if t is not x]
    if others and all(_probed_leaves.get(id(t)) is t for t in others):
        return
    if leaves:
        try:
            # autograd.grad with explicit inputs accumulates nothing into .grad and fires no
            # DistributedDataParallel hooks, so the probe leaves the training step as it was.
            torch.autograd.grad(grad.float().square().sum(), leaves, retain_graph=True, allow_unused=True)
        except RuntimeError as err:
            raise RuntimeError(explain_double_backward_error(err)) from err
    _probed_leaves.update((id(t), t) for t in others)


def explain_double_backward_error(err: BaseException) -> str:
    """The message of `err` (PyTorch's refusal to differentiate a backward) with the workaround."""
    said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    low = said.lower()
    if "torch.compile" in low or "aot_autograd" in low:
        fix = (
            "a torch.compile'd critic (aot_autograd) has no double backward: pass the uncompiled module for the "
            "penalty pass, or use one of the first-order penalties below, which run the compiled critic."
        )
    elif "cudnn_rnn" in low:
        fix = (
            "cuDNN's RNN/LSTM/GRU kernels have no double backward: run the critic's penalty pass inside "
            "`with torch.backends.cudnn.flags(enabled=False):` (PyTorch's native RNN kernels are twice "
            "differentiable)."
        )
    elif "scaled_dot_product" in low or "attention" in low:
        fix = (
            "the fused scaled_dot_product_attention kernels (flash, memory-efficient, cuDNN) have no double "
            "backward: run the critic's penalty pass inside "
            "`with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):`."
        )
    elif "once_differentiable" in low:
        fix = (
            "a custom torch.autograd.Function in the critic is marked @once_differentiable: write its backward "
            "with differentiable torch operations (and drop the decorator) or give it a double backward."
        )
    else:
        fix = (
            "an operation in the critic has no double backward (e.g. cuDNN RNNs: "
            "`torch.backends.cudnn.flags(enabled=False)`; fused attention: "
            "`torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`; a custom autograd.Function: make its backward "
            "differentiable): replace it by a twice-differentiable equivalent for the penalty pass."
        )
    return (
        "fastgp: the critic cannot be differentiated twice, so the gradient penalty cannot be back-propagated "
        f"into its parameters. PyTorch said: {said!r}. Workaround: {fix} Or avoid the double backward: "
        "gradient_penalty(..., method='fd') keeps the penalty and takes its gradient by finite differences "
        "(smooth critics: GELU, SiLU, softplus, tanh), and preset='ar1'/'ar2' is the approximated R1/R2 of Lin et "
        f"al. 2025 (first-order, any critic). ({CHECK_ENV_VAR}=0 skips this check.)"
    )
