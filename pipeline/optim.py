"""The optimizer step of training: gradient-norm clipping then Adadelta, as one callable.

``make_clip_and_step`` picks how the step runs; every way computes torch's own
``clip_grad_norm_`` + ``torch.optim.Adadelta.step``:

- on the CPU, ``clip_and_adadelta_``: the same operations chunk by chunk, each chunk in cache,
  bit for bit torch's (the step is memory-bound: fewer passes over memory is the speed-up),
  and only the touched rows of the embeddings get the full update;
- elsewhere (CUDA), torch's clipping and ``Adadelta.step`` as they are;
- with ``compile``, ``torch.compile`` of torch's two calls, one fused loop, falling back to
  the eager step when compiling fails (``compiled_or_eager``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn

log = logging.getLogger("rnnenc")

# elements: each of 2 threads takes half of a chunk's parameter, gradient, state and buffers (3.5 MB)
# into its L2. Measured at the paper's size on 2 cores (benchmarks/train.py, waiters spinning as
# `rnnenc train` runs): 2^17 on 2 threads 67 ms, 2^15 on 1 thread 106 ms, torch's eager 81 ms.
ADADELTA_CHUNK = 1 << 17


class StepConfig(Protocol):
    """What the step needs from a training configuration (``pipeline.train.TrainConfig`` has it)."""

    clip_norm: float  # the gradients' global norm is clipped to this
    compile: bool  # torch.compile the step


def make_clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, config: StepConfig
                       ) -> Callable[[], None]:
    """The step that clips ``model``'s gradients to ``config.clip_norm`` then steps ``optimizer``.

    Eager Adadelta makes about ten passes over the 17M parameters and its state, each a
    memory-bound kernel: on the CPU that costs as much as a third of the model's matmuls
    (``foreach=True`` does not help: the tensors are large, the passes are the cost). On the
    CPU the update therefore runs cache-sized chunk by chunk (``clip_and_adadelta_``): the
    same operations, the same results, about 20% less time than torch's step at the paper's
    size (only the embedding rows the batch touched get the full update). Compiled
    (``config.compile``), it is one fused loop (the first call compiles: seconds with a warm
    inductor cache, about a minute cold).

    Args:
        model: the model whose ``parameters()`` ``optimizer`` updates; its ``nn.Embedding``
            weights are updated row-sparsely by the chunked step.
        optimizer: the optimizer; the chunked step is used for a ``torch.optim.Adadelta`` over
            CPU parameters only.
        config: ``clip_norm`` and ``compile``.

    Returns:
        A callable to run after ``loss.backward()``, once per update.
    """
    params = list(model.parameters())

    def clip_and_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
        optimizer.step()

    eager = clip_and_step
    if all(p.device.type == "cpu" for p in params) and isinstance(optimizer, torch.optim.Adadelta):
        embeddings = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]

        def chunked_step() -> None:
            clip_and_adadelta_(params, optimizer, config.clip_norm, row_sparse=embeddings)

        eager = chunked_step
    if config.compile:
        return compiled_or_eager(torch.compile(clip_and_step), eager, params, optimizer)
    return eager


def compiled_or_eager(compiled: Callable[[], None], eager: Callable[[], None], params: list[torch.Tensor],
                      optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """``compiled``, or ``eager`` from the first call on if compiling fails.

    Compiling happens on the first call and fails on machines without a C++ compiler or on
    unsupported platforms. The parameters, gradients and optimizer state are then restored
    to what they were before the failed call, so the run goes on as if it had been eager.

    Args:
        compiled: the ``torch.compile``'d step (compiles when first called).
        eager: the same step uncompiled.
        params: every tensor the step writes besides the optimizer's state.
        optimizer: the optimizer both steps update.

    Returns:
        The step to call once per update.
    """
    chosen: list[Callable[[], None]] = []

    def step() -> None:
        if chosen:
            chosen[0]()
            return
        log.info("compiling the clip + Adadelta step (first update: seconds, up to a minute on a cold cache)")
        saved = ([p.detach().clone() for p in params], [None if p.grad is None else p.grad.clone() for p in params],
                 copy.deepcopy(optimizer.state_dict()))
        try:
            compiled()
        except Exception as exc:  # torch raises many types (InductorError, BackendCompilerFailed, ...)
            log.warning("--compile: torch.compile failed (%s: %s); clip + Adadelta run uncompiled",
                        type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            with torch.no_grad():
                for p, value, grad in zip(params, *saved[:2], strict=True):
                    p.copy_(value)
                    p.grad = grad
            optimizer.load_state_dict(saved[2])
            chosen.append(eager)
            eager()
            return
        chosen.append(compiled)

    return step


@torch.no_grad()
def clip_and_adadelta_(params: list[torch.Tensor], optimizer: torch.optim.Adadelta, max_norm: float,
                       chunk: int = ADADELTA_CHUNK, row_sparse: Sequence[torch.Tensor] = ()) -> None:
    """``clip_grad_norm_(params, max_norm)`` then ``optimizer.step()``, computed chunk by chunk.

    Each chunk goes through all of Adadelta's operations (torch's, in its order) while it is in
    cache; the clipped gradient g * coef is formed per chunk (p.grad is left unscaled, unlike
    ``clip_grad_norm_``). The optimizer's state is torch's own (``state_dict`` unchanged).

    ``row_sparse`` parameters (the embeddings: a batch touches a few hundred of 15k rows) get the
    full update on their rows with a non-zero gradient only; on the others Adadelta reduces,
    bit for bit, to square_avg *= rho and acc_delta *= rho (g = 0 gives delta = 0 exactly).

    Args:
        params: the parameters whose gradients are clipped together (those without one are skipped).
        optimizer: a plain Adadelta (no weight decay, maximize or differentiable) over ``params``.
        max_norm: the clipping threshold of the gradients' global 2-norm.
        chunk: elements per chunk.
        row_sparse: 2-d parameters among ``params`` updated on their non-zero gradient rows only.

    Raises:
        ValueError: ``optimizer`` uses an Adadelta option this step does not implement.
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    scale = float(coef) != 1.0  # g * 1.0 == g: skip the pass
    for group in optimizer.param_groups:
        if group["weight_decay"] or group["maximize"] or group.get("differentiable"):
            raise ValueError("clip_and_adadelta_ implements plain Adadelta only")
    buffers = [params[0].new_empty(chunk) for _ in range(3)]
    sparse = {id(p) for p in row_sparse}

    def update(P: torch.Tensor, G: torch.Tensor, S: torch.Tensor, A: torch.Tensor) -> None:
        """torch's Adadelta step on flat tensors, chunk by chunk."""
        for i in range(0, P.numel(), chunk):
            p, g, s, a = (t[i: i + chunk] for t in (P, G, S, A))
            n = p.numel()
            g = torch.mul(g, coef, out=buffers[0][:n]) if scale else g
            s.mul_(rho).addcmul_(g, g, value=1 - rho)
            std = torch.add(s, eps, out=buffers[1][:n]).sqrt_()
            delta = torch.add(a, eps, out=buffers[2][:n]).sqrt_().div_(std).mul_(g)
            a.mul_(rho).addcmul_(delta, delta, value=1 - rho)
            p.add_(delta, alpha=-lr)

    for group in optimizer.param_groups:
        rho, eps, lr = group["rho"], group["eps"], group["lr"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state[p]
            if not state:  # as torch.optim.Adadelta initialises it
                state["step"] = torch.zeros((), dtype=torch.get_default_dtype())
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["acc_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            tensors = (p, p.grad, state["square_avg"], state["acc_delta"])
            if id(p) in sparse and p.dim() == 2:
                rows = p.grad.ne(0).any(1).nonzero().squeeze(1)
                P, G, S, A = (t.index_select(0, rows) for t in tensors)
                update(P.view(-1), G.view(-1), S.view(-1), A.view(-1))
                for t, new in ((state["square_avg"], S), (state["acc_delta"], A)):
                    t.mul_(rho).index_copy_(0, rows, new)
                p.index_copy_(0, rows, P)
            else:
                update(*(t.view(-1) for t in tensors))
