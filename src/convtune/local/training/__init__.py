"""The training loop of the local backend: LoRA, QLoRA or full fine-tuning, on a CPU or a GPU.

Read as a recipe: set up (`loop.train`: device, precision and threads from `runtime`, the model
with its adapters from `adapters`), train (`loop.TrainingLoop`, over the batches of `batching`
with the packed attention of `attention` and `kernels`, the loss of `losses`), save
(`checkpoints`). Options and results are in `config`.

Where the time goes on a CPU, and what the loop does about it, is measured on SmolLM2-135M with
LoRA on every linear layer (BENCHMARKS.md has the figures); each module's docstring says its
part: padding and attention (`attention`, `kernels`, `batching`), precision (`runtime`,
`adapters`), the output layer (`losses`) and the optimizer (`loop`).

A GPU wants other choices, each made per device when the option says "auto": packed examples
attend through a variable-length kernel instead of per-example products (`attention`), a forward
pass takes tens of thousands of tokens (`runtime.default_micro_batch_tokens`), the
cross-entropy is chunked or fused (`losses`); QLoRA and `torch.compile` are options.

Data parallel: run under ``torchrun --nproc_per_node N`` unchanged; one process and N processes
compute the same update. Exact resume: a checkpoint (weights, optimizer, step) is all a run
needs to continue as if it had never stopped.
"""

from .checkpoints import load_checkpoint, merge_and_save, save_checkpoint
from .config import WORKER_OPTIONS, StepMetrics, TrainConfig, TrainResult, auto_batch_size
from .loop import evaluate, train
from .runtime import cpu_computes_bf16

__all__ = [
    "WORKER_OPTIONS",
    "StepMetrics",
    "TrainConfig",
    "TrainResult",
    "auto_batch_size",
    "cpu_computes_bf16",
    "evaluate",
    "load_checkpoint",
    "merge_and_save",
    "save_checkpoint",
    "train",
]
