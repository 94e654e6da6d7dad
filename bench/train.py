"""Benchmark convtune's trainer against TRL's SFTTrainer: training tokens per second and memory.

Same data (a chat JSONL made by `convtune prepare`), same model (SmolLM2-135M-Instruct, loaded
by `convtune.local.base_models` as float32 safetensors), same LoRA (r 16, alpha 32, every linear
layer, no dropout), same batch (8 examples per optimizer step), same machine. Each configuration
runs in its own subprocess, `--repeat` times round-robin; each run does `--warmup` optimizer
steps, then `--steps` timed ones. The table keeps each configuration's best run.

Tokens per second counts the non-padding input tokens the model's forward passes received
(a forward pre-hook on the model, the same for every trainer: the attention mask's sum when there
is one, every token of a padding-free row otherwise) between the end of the last warm-up step and
the end of the last timed step, divided by the wall time between them. Peak memory is the
process's peak RSS (getrusage), loading the model included.

Configurations:
  convtune          convtune.local.training.train, precision auto (bf16 on this CPU)
  convtune-fp32     the same in float32
  trl-default-fp32  SFTTrainer defaults + LoRA, bf16=False (gradient checkpointing on, padding)
  trl-default-bf16  SFTTrainer defaults + LoRA (TRL's own default is bf16=True)
  trl-bf16-nogc     bf16, gradient checkpointing off
  trl-bf16-nogc-pf  bf16, gradient checkpointing off, padding_free=True
  trl-bf16-nogc-packing  bf16, gradient checkpointing off, packing=True (best-fit decreasing
                    into rows of 1024 tokens, padding-free), one row per step (about 8 examples)

  .venv/bin/python bench/train.py [--data CSV] [--steps 20] [--warmup 3] [--repeat 2]
                                  [--configs a,b,...] [--quality] [--json FILE]

`--quality` also trains convtune for the bundled example's 3 epochs and prints the validation
loss before and after (bf16 and fp32), to show that the fast loop learns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
CONVTUNE = ROOT / ".venv" / "bin" / "convtune"
EXAMPLE = ROOT / "examples" / "conversations.csv"
MODEL = "SmolLM2-135M-Instruct"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
BATCH = 8
CONFIGS = {
    "convtune": {"precision": "auto"},
    "convtune-fp32": {"precision": "fp32"},
    "trl-default-fp32": {"bf16": False},
    "trl-default-bf16": {"bf16": True},
    "trl-bf16-nogc": {"bf16": True, "gradient_checkpointing": False},
    "trl-bf16-nogc-pf": {
        "bf16": True,
        "gradient_checkpointing": False,
        "padding_free": True,
        "max_length": None,  # TRL's condition for padding_free without packing
    },
    "trl-bf16-nogc-packing": {
        "bf16": True,
        "gradient_checkpointing": False,
        "packing": True,
        "per_device_train_batch_size": 1,  # one row of 1024 tokens: about 8 examples, as others
    },
    "trl-bf16w-nogc-packing": {
        "model_dtype": "bfloat16",  # the model itself in bf16, not only autocast
        "bf16": True,
        "gradient_checkpointing": False,
        "packing": True,
        "per_device_train_batch_size": 1,
    },
    "trl-bf16w-nogc": {"model_dtype": "bfloat16", "bf16": True, "gradient_checkpointing": False},
}
SLOW = {"trl-bf16-nogc-pf"}  # 20 tokens/s here: 20 minutes a run; not in the default list
LABELS = {
    "convtune": "convtune (bf16 autocast, packed, loss positions only)",
    "convtune-fp32": "convtune, fp32",
    "trl-default-fp32": "TRL SFTTrainer defaults + LoRA, fp32",
    "trl-default-bf16": "TRL SFTTrainer defaults + LoRA, bf16 (TRL's default)",
    "trl-bf16-nogc": "TRL bf16, no gradient checkpointing",
    "trl-bf16-nogc-pf": "TRL bf16, no gradient checkpointing, padding_free",
    "trl-bf16-nogc-packing": "TRL bf16, no gradient checkpointing, packing (1 row of 1024 per step)",
    "trl-bf16w-nogc-packing": "TRL, model in bf16, no gradient checkpointing, packing (1 row)",
    "trl-bf16w-nogc": "TRL, model in bf16, no gradient checkpointing",
}


# -- one run, in its own process ---------------------------------------------------------------


def calibrate() -> float:
    """GFLOPS of a bf16 matrix product on this process's threads: shows a busy machine.

    The VM's CPUs are shared with other tenants; a run with a low figure here ran slow for
    reasons of its own, and best-of-N exists for that.
    """
    import torch

    a = torch.randn(2048, 576).bfloat16()
    b = torch.randn(576, 1536).bfloat16()
    a @ b
    started = time.perf_counter()
    for _ in range(20):
        a @ b
    return 20 * 2 * 2048 * 576 * 1536 / (time.perf_counter() - started) / 1e9


class Meter:
    """Counts the non-padding tokens the model's forward passes receive; times the steps."""

    def __init__(self, model, warmup: int) -> None:
        self.tokens = 0
        self.warmup = warmup
        self.marks: list[tuple[float, int]] = []  # (time, tokens so far) at each step's end
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())

    def step_end(self) -> None:
        self.marks.append((time.perf_counter(), self.tokens))

    def result(self) -> dict:
        (t0, n0), (t1, n1) = self.marks[self.warmup - 1], self.marks[-1]
        return {
            "steps": len(self.marks) - self.warmup,
            "tokens": n1 - n0,
            "seconds": t1 - t0,
            "tokens_per_second": (n1 - n0) / (t1 - t0),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def run_convtune(jsonl: Path, options: dict, steps: int, warmup: int) -> dict:
    from convtune.local.base_models import load_base_model, resolve_base_model
    from convtune.local.loss_masks import tokenize_file
    from convtune.local.training import TrainConfig, train

    model, tokenizer, _ = load_base_model(resolve_base_model(MODEL))
    examples, _ = tokenize_file(jsonl, tokenizer, max_length=1024)
    meter = Meter(model, warmup)
    config = TrainConfig(
        batch_size=BATCH,
        learning_rate=2e-4,
        lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
        lora_targets=LORA["target_modules"],
        max_steps=warmup + steps,
        **options,
    )
    result = train(model, tokenizer, examples, None, config, on_metrics=lambda m: meter.step_end())
    return {**meter.result(), "final_train_loss": result.train_loss, "precision": result.precision}


def run_trl(jsonl: Path, options: dict, steps: int, warmup: int) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from convtune.local.base_models import load_base_model, resolve_base_model

    datasets.disable_progress_bars()
    options = dict(options)
    dtype = getattr(torch, options.pop("model_dtype", "float32"))
    model, tokenizer, _ = load_base_model(resolve_base_model(MODEL), dtype=dtype)
    data = datasets.load_dataset("json", data_files=str(jsonl), split="train")
    meter = Meter(model, warmup)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.step_end()

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            learning_rate=2e-4,
            max_steps=warmup + steps,
            save_strategy="no",
            report_to="none",
            logging_steps=10,
            seed=0,
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=True,
            **{"max_length": 1024, "per_device_train_batch_size": BATCH, **options},
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
            callbacks=[Timer()],
        )
        output = trainer.train()
    return {**meter.result(), "final_train_loss": output.training_loss}


def quality(jsonl: Path, valid: Path) -> dict:
    """Validation loss before and after the example's 3 epochs, bf16 and fp32."""
    from convtune.local.base_models import load_base_model, resolve_base_model
    from convtune.local.loss_masks import tokenize_file
    from convtune.local.training import TrainConfig, evaluate, train

    rows = {}
    for precision in ("auto", "fp32"):
        model, tokenizer, _ = load_base_model(resolve_base_model(MODEL))
        examples, _ = tokenize_file(jsonl, tokenizer, max_length=1024)
        held_out, _ = tokenize_file(valid, tokenizer, max_length=1024)
        config = TrainConfig(precision=precision)
        before = evaluate(model, held_out, config)
        result = train(model, tokenizer, examples, held_out, config)
        after = evaluate(result.model, held_out, config)
        rows[result.precision] = {
            "valid_loss_before": before[0],
            "valid_accuracy_before": before[1],
            "valid_loss_after": after[0],
            "valid_accuracy_after": after[1],
            "steps": result.steps,
            "seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second,
        }
    return rows


# -- the driver ---------------------------------------------------------------------------------


def prepare(csv: Path, folder: Path) -> tuple[Path, Path]:
    subprocess.run(
        [str(CONVTUNE), "prepare", str(csv), "-o", str(folder), "--force"],
        check=True,
        capture_output=True,
    )
    return folder / f"{csv.stem}.train.jsonl", folder / f"{csv.stem}.valid.jsonl"


def child(name: str, jsonl: Path, steps: int, warmup: int) -> dict:
    command = [
        str(PYTHON),
        __file__,
        "--child",
        name,
        "--train-file",
        str(jsonl),
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def table(results: dict[str, dict]) -> str:
    base = results.get("trl-default-fp32", {}).get("tokens_per_second")
    trl = {k: v for k, v in results.items() if k.startswith("trl")}
    best_trl = max(trl, key=lambda k: trl[k]["tokens_per_second"]) if trl else None
    lines = [
        "| configuration | tokens/s | vs TRL defaults fp32 | vs TRL's best | peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        tps = r["tokens_per_second"]
        vs_base = f"{tps / base:.1f}x" if base else "-"
        vs_best = f"{tps / trl[best_trl]['tokens_per_second']:.2f}x" if best_trl else "-"
        lines.append(
            f"| {LABELS[name]} | {tps:,.0f} | {vs_base} | {vs_best} | {r['peak_rss_mb']:,.0f} MB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=EXAMPLE, help="a spreadsheet to prepare")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--configs",
        default=",".join(n for n in CONFIGS if n not in SLOW),
        help=f"comma-separated, among: {', '.join(CONFIGS)}",
    )
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--train-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one run, one configuration: print its result as JSON
        name, options = args.child, CONFIGS[args.child]
        run = run_convtune if name.startswith("convtune") else run_trl
        before = calibrate()
        result = run(args.train_file, options, args.steps, args.warmup)
        print(json.dumps({**result, "calibration_gflops": [before, calibrate()]}))
        return

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations: {unknown} (known: {', '.join(CONFIGS)})")
    with tempfile.TemporaryDirectory() as tmp:
        train_file, valid_file = prepare(args.data, Path(tmp))
        n = sum(1 for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip())
        print(
            f"{args.data.name}: {n} training examples; {MODEL}; LoRA r16 all-linear; batch {BATCH};"
            f" {args.warmup} warm-up + {args.steps} timed steps; best of {args.repeat};"
            f" {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
            flush=True,
        )
        results: dict[str, dict] = {}
        for round_ in range(args.repeat):
            for name in names:
                r = child(name, train_file, args.steps, args.warmup)
                gflops = "/".join(f"{g:.0f}" for g in r["calibration_gflops"])
                print(
                    f"  round {round_ + 1} {name}: {r['tokens_per_second']:.1f} tokens/s,"
                    f" peak RSS {r['peak_rss_mb']:.0f} MB (machine: {gflops} GFLOPS before/after)",
                    flush=True,
                )
                if (
                    name not in results
                    or r["tokens_per_second"] > results[name]["tokens_per_second"]
                ):
                    results[name] = r
        print()
        print(table({n: results[n] for n in names}))
        print()
        print("command: .venv/bin/python bench/train.py " + " ".join(sys.argv[1:]))
        quality_rows = quality(train_file, valid_file) if args.quality else None
        if quality_rows:
            print()
            print(
                "| precision | valid loss before | after 3 epochs | accuracy before | after | steps | tokens/s |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|")
            for precision, q in quality_rows.items():
                print(
                    f"| {precision} | {q['valid_loss_before']:.3f} | {q['valid_loss_after']:.3f} |"
                    f" {q['valid_accuracy_before']:.3f} | {q['valid_accuracy_after']:.3f} |"
                    f" {q['steps']} | {q['tokens_per_second']:.0f} |"
                )
        if args.json:
            args.json.write_text(json.dumps({"runs": results, "quality": quality_rows}, indent=1))


if __name__ == "__main__":
    main()
