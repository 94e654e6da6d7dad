"""The loss: cross-entropy over the output layer, at the positions that have a loss only.

SmolLM2's vocabulary has 49,152 words: at the loss positions of a GPU's micro-batch (thousands),
float32 logits alone take gigabytes. Three ways to the same loss (`CROSS_ENTROPY`):

- ``plain``: the model's own output layer at the loss positions (``logits_to_keep``), then
  cross-entropy in float32. The fastest on a CPU (a chunked one was measured: no faster).
- ``chunked``: `chunked_cross_entropy`, a few hundred rows of logits at a time, each chunk's
  gradient computed at once (the output layer's product is not recomputed backwards): never
  all float32 logits at once. Equal to ``plain`` to float tolerance (tested).
- ``liger``: liger-kernel's fused linear cross-entropy (Triton, so CUDA only; imported there and
  only there).

``auto`` (`choose_loss`): plain on a CPU; on a GPU liger where it is installed, else chunked.
The fused ways take the decoder's hidden states and the output layer's weight, so they need a
plain linear output layer (not one with adapters, a bias or a soft-cap on its logits); a model
without one keeps ``plain``.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import OptionError

CROSS_ENTROPY = ("auto", "plain", "chunked", "liger")
CHUNK_VALUES = 1 << 25  # logits per chunk (128 MB in float32): 682 rows of SmolLM2's


def plain_cross_entropy(logits: torch.Tensor, targets: torch.Tensor):
    """Summed cross-entropy (in float32) and the number of targets the logits rank first."""
    floats = logits.float()
    loss = F.cross_entropy(floats, targets, reduction="sum")
    return loss, (floats.detach().argmax(-1) == targets).sum()


def output_weight(core: Any) -> torch.Tensor | None:
    """The output layer's weight, if the fused losses can take it: a plain linear layer without
    bias whose logits are used as they are."""
    head = core.get_output_embeddings()
    config = core.config
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    if getattr(config, "final_logit_softcapping", None):
        return None
    for name in ("logits_scaling", "logit_scale"):  # granite, cohere
        if getattr(config, name, None) not in (None, 1, 1.0):
            return None
    return head.weight


def loss_problem(loss: str, device: torch.device, core: Any) -> str | None:
    """Why `loss` cannot run here (None: it can)."""
    if loss == "plain":
        return None
    if loss not in CROSS_ENTROPY[1:]:
        return f"unknown cross-entropy {loss!r}"
    if output_weight(core) is None:
        return "needs a plain output layer (this model's has adapters, a bias or a soft-cap)"
    if loss == "liger":
        if device.type != "cuda":
            return "liger-kernel runs on CUDA only"
        if importlib.util.find_spec("liger_kernel") is None:
            return "needs the liger-kernel package (pip install liger-kernel)"
        if not _liger_has_accuracy():
            return "needs liger-kernel 0.6 or later (token accuracy)"
    return None


def choose_loss(requested: str, device: torch.device, core: Any) -> str:
    """`requested` if it runs here (else an `OptionError` that says why), or for "auto" plain on
    a CPU and on a GPU liger, else chunked, where the model allows."""
    if requested != "auto":
        problem = loss_problem(requested, device, core)
        if problem is not None:
            raise OptionError(
                f"cross_entropy {requested}: {problem}", hint="cross_entropy auto chooses"
            )
        return requested
    if device.type == "cuda":
        for loss in ("liger", "chunked"):
            if loss_problem(loss, device, core) is None:
                return loss
    return "plain"


def fused_cross_entropy(loss: str, hidden: torch.Tensor, weight: torch.Tensor, targets):
    """Summed cross-entropy and correct guesses of ``hidden @ weight.T`` against `targets`,
    by the fused `loss` (chunked or liger)."""
    if loss == "liger":
        return liger_cross_entropy(hidden, weight, targets)
    return chunked_cross_entropy(hidden, weight, targets)


# -- chunked ------------------------------------------------------------------------------------


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """What the output layer's product computes in: autocast's dtype where it is on."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def _chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    grad_hidden: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed loss and correct guesses, chunk by chunk; the gradients of the summed loss
    into `grad_hidden` and `grad_weight` when given."""
    rows = max(1, CHUNK_VALUES // weight.shape[0])
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        h = hidden[start : start + rows]
        t = targets[start : start + rows]
        logits = (h @ weight.t()).float()
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(1, t[:, None]).squeeze(1)
        loss += (lse - picked).sum()
        correct += (logits.argmax(-1) == t).sum()
        if grad_hidden is None and grad_weight is None:
            continue
        grad = logits.sub_(lse[:, None]).exp_()  # the softmax, in place of the logits
        grad[torch.arange(len(t), device=t.device), t] -= 1.0
        grad = grad.to(h.dtype)
        if grad_hidden is not None:
            grad_hidden[start : start + rows] = grad @ weight
        if grad_weight is not None:
            grad_weight += (grad.t() @ h).float()
    return loss, correct


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Gradients computed with the loss, chunk by chunk, and scaled by the loss's gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, hidden_grad, weight_grad):
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        grad_hidden = torch.empty_like(h) if hidden_grad else None
        grad_weight = (
            torch.zeros(w.shape, dtype=torch.float32, device=w.device) if weight_grad else None
        )
        loss, correct = _chunks(h, w, targets, grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, grad_correct):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        if grad_hidden is not None:
            grad_hidden = (grad_hidden.float() * grad_loss).to(hidden_dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """Summed cross-entropy (float32) of ``hidden @ weight.T`` against `targets`, and the number
    of targets ranked first, without ever holding more than one chunk of float32 logits."""
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _ChunkedCrossEntropy.apply(
                hidden, weight, targets, dtype, hidden.requires_grad, weight.requires_grad
            )
        return _chunks(hidden.to(dtype), weight.to(dtype), targets, None, None)


# -- liger-kernel ---------------------------------------------------------------------------------


def _liger_loss_class():
    from liger_kernel.transformers.fused_linear_cross_entropy import (
        LigerFusedLinearCrossEntropyLoss,
    )

    return LigerFusedLinearCrossEntropyLoss


def _liger_has_accuracy() -> bool:
    try:
        parameters = inspect.signature(_liger_loss_class()).parameters
    except Exception:  # any failure to import means: not usable here
        return False
    return "return_token_accuracy" in parameters


def liger_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """liger-kernel's fused linear cross-entropy: summed loss and correct guesses."""
    function = _liger_loss_class()(reduction="sum", return_token_accuracy=True)
    out = function(weight, hidden, targets)
    correct = (out.token_accuracy.detach().float() * targets.numel()).round().long()
    return out.loss, correct
