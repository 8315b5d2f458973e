"""One differentiable fused op, two ways in, one backward.

Eager calls go through a plain `torch.autograd.Function` (old style: `forward(ctx, ...)`, which
costs the host less than a `setup_context` one and far less than a custom op's autograd wrapper).
Under torch.compile the op's registered `torch.library.custom_op` is traced instead (opaque to the
compiler, with fake shapes). Both run the same forward launcher, set the context up with the same
function and share one backward; they differ only in the backward launcher that `ctx.bwd` names:
the plain launcher eagerly, the registered backward op when traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def function(
    name: str,
    forward: Callable[..., Any],
    backward_launcher: Callable[..., Any],
    setup_context: Callable[[Any, tuple, Any], None],
    backward: Callable[..., Any],
) -> type[torch.autograd.Function]:
    """The autograd.Function for eager calls: ``apply(*inputs)`` returns ``forward(*inputs)``."""

    def forward_ctx(ctx: Any, *inputs: Any) -> Any:
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        ctx.bwd = backward_launcher
        return output

    return type(
        name, (torch.autograd.Function,), {"forward": staticmethod(forward_ctx), "backward": staticmethod(backward)}
    )


def register(
    op: Any,
    backward_op: Callable[..., Any],
    setup_context: Callable[[Any, tuple, Any], None],
    backward: Callable[..., Any],
) -> None:
    """Make the custom op `op` differentiable with the same context and backward."""

    def setup(ctx: Any, inputs: tuple, output: Any) -> None:
        setup_context(ctx, inputs, output)
        ctx.bwd = backward_op

    op.register_autograd(backward, setup_context=setup)
