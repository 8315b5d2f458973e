"""One fused op, three ways in, one backward.

- Eager calls that autograd records go through a plain `torch.autograd.Function` (old style,
  ``forward(ctx, ...)``: it costs the host far less than a custom op's autograd wrapper, and less
  than a ``setup_context`` Function, which binds its arguments with `inspect` on every call).
- Eager calls that autograd does not record (no differentiable input requires grad, or grad mode
  is off) run the forward launcher alone.
- Under torch.compile or a functorch transform the op's registered `torch.library.custom_op` is
  called instead (opaque to the compiler, with fake shapes).

The Function and the custom op set their context up with the same function and share one
backward; they differ only in the backward launcher that ``ctx.bwd`` names (the plain launcher
eagerly, the registered backward op when traced). The Function returns only the outputs the caller
sees; the others (kept for the backward) stay on the context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def traced() -> bool:
    """True under torch.compile and functorch transforms, which need the registered custom op."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


class Fused:
    """``fused(*inputs)``: the first `outputs` outputs of `forward(*inputs)`, differentiable in the
    inputs at positions `differentiable` (see the module docstring for the way each call takes)."""

    def __init__(
        self,
        name: str,
        forward: Callable[..., tuple],
        backward_launcher: Callable[..., Any],
        op: Any,
        backward_op: Callable[..., Any],
        setup_context: Callable[[Any, tuple, Any], None],
        backward: Callable[..., Any],
        *,
        outputs: int,
        differentiable: tuple[int, ...],
    ) -> None:
        def forward_ctx(ctx: Any, *inputs: Any) -> tuple:
            output = forward(*inputs)
            setup_context(ctx, inputs, output)
            ctx.bwd = backward_launcher
            return output[:outputs]

        def setup_op(ctx: Any, inputs: tuple, output: Any) -> None:
            setup_context(ctx, inputs, output)
            ctx.bwd = backward_op

        op.register_autograd(backward, setup_context=setup_op)
        self.function = type(
            name, (torch.autograd.Function,), {"forward": staticmethod(forward_ctx), "backward": staticmethod(backward)}
        )
        # Function.apply's Python layer binds the arguments of setup_context-style Functions and
        # unwraps functorch's wrappers: neither applies here (old style; functorch takes the custom
        # op), so eager calls go straight to the C++ apply it ends in, ~2 µs less per call.
        base_apply = torch._C._FunctionBase.__dict__.get("apply")
        self.apply = base_apply.__get__(None, self.function) if base_apply is not None else self.function.apply
        self.forward, self.op, self.outputs, self.differentiable = forward, op, outputs, differentiable

    def __call__(self, *inputs: Any) -> tuple:
        if traced():
            return self.op(*inputs)[: self.outputs]
        return self.eager(*inputs)

    def eager(self, *inputs: Any) -> tuple:
        """The call outside torch.compile and functorch (the caller knows it is not `traced()`)."""
        if torch.is_grad_enabled():
            for i in self.differentiable:
                t = inputs[i]
                if t is not None and t.requires_grad:
                    return self.apply(*inputs)
        return self.forward(*inputs)[: self.outputs]
