"""Benchmark convtune's trainer against TRL's SFTTrainer: training tokens per second and memory.

Same data (a chat JSONL made by `convtune prepare`), same model (SmolLM2-135M-Instruct, loaded
by `convtune.local.base_models` as float32 safetensors, or `--model FOLDER`; `--config-dims 1.7B`
makes a model of SmolLM2-1.7B's dimensions with random weights: speed does not depend on their
values), same LoRA (r 16, alpha 32, every linear layer, no dropout), same batch (8 examples per
optimizer step, `--batch-size`), same device (`--device cpu|cuda|auto`). Each configuration runs
in its own subprocess, `--repeat` times round-robin; each run does `--warmup` optimizer steps,
then `--steps` timed ones. The table keeps each configuration's best run.

Tokens per second counts the non-padding input tokens the model's forward passes received
(a forward pre-hook on the model, the same for every trainer: the attention mask's sum when there
is one, every token of a padding-free row otherwise) between the end of the last warm-up step and
the end of the last timed step, divided by the wall time between them. Peak memory is the
process's peak RSS (getrusage), loading the model included; on CUDA, the peak of GPU memory
allocated. MFU (model FLOPs utilisation) is 6 x parameters x tokens/s over the device's peak dense
bf16 FLOPs (`PEAK_BF16_TFLOPS`, by GPU name, or `--peak-tflops`; none is assumed for a CPU).

Configurations:
  convtune          convtune.local.training.train, precision auto (bf16 on this CPU)
  convtune-fp32     the same in float32
  trl-default-fp32  SFTTrainer defaults + LoRA, bf16=False (gradient checkpointing on, padding)
  trl-default-bf16  SFTTrainer defaults + LoRA (TRL's own default is bf16=True)
  trl-bf16-nogc     bf16, gradient checkpointing off
  trl-bf16-nogc-pf  bf16, gradient checkpointing off, padding_free=True
  trl-bf16-nogc-packing  bf16, gradient checkpointing off, packing=True (best-fit decreasing
                    into rows of 1024 tokens, padding-free), one row per step (about 8 examples)

  .venv/bin/python bench/train.py [--data CSV | --jsonl FILE] [--steps 20] [--warmup 3]
        [--repeat 2] [--configs a,b,...] [--quality] [--json FILE]
        [--device cpu|cuda|auto] [--model NAME|FOLDER] [--config-dims 135M|360M|1.7B]
        [--batch-size 8] [--peak-tflops N]
        [--attention auto|segments|varlen|flash|flex] [--cross-entropy auto|plain|chunked|liger]
        [--compile] [--micro-batch-tokens N] [--quantize-base none|4bit]   (convtune's runs)

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
# SmolLM2's sizes (the same vocabulary, tied embeddings and head size 64)
DIMS = {
    "135M": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
             "num_attention_heads": 9, "num_key_value_heads": 3},
    "360M": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
             "num_attention_heads": 15, "num_key_value_heads": 5},
    "1.7B": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
             "num_attention_heads": 32, "num_key_value_heads": 32},
}  # fmt: skip
# dense bf16 peaks (no sparsity) by a part of the GPU's name, the more specific first
PEAK_BF16_TFLOPS = {
    "H200": 989, "H100": 989, "A100": 312, "L40S": 362, "L40": 181, "L4": 121,
}  # fmt: skip
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
    """GFLOPS of a bf16 matrix product on this process's threads (or its GPU): shows a busy
    machine.

    The VM's CPUs are shared with other tenants; a run with a low figure here ran slow for
    reasons of its own, and best-of-N exists for that.
    """
    import torch

    cuda = torch.cuda.is_available()
    m, k, n = (8192, 8192, 8192) if cuda else (2048, 576, 1536)
    a = torch.randn(m, k, device="cuda" if cuda else "cpu").bfloat16()
    b = torch.randn(k, n, device=a.device).bfloat16()
    a @ b
    sync()
    started = time.perf_counter()
    for _ in range(20):
        a @ b
    sync()
    return 20 * 2 * m * k * n / (time.perf_counter() - started) / 1e9


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def device_facts(peak_tflops: float | None) -> dict:
    """The device's name and peak dense bf16 TFLOPS (given, else from the table for GPUs)."""
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu", "device_name": platform.processor() or platform.machine(),
                "peak_tflops": peak_tflops}  # fmt: skip
    name = torch.cuda.get_device_name(0)
    if peak_tflops is None:
        peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return {"device": "cuda", "device_name": name, "peak_tflops": peak_tflops}


def load_model(name: str, dims: str | None, dtype=None):
    """The benchmark's model and tokenizer: a base model by name or folder, or with `dims` a
    model of those SmolLM2 dimensions and random weights (the same tokenizer)."""
    import torch

    from convtune.local.base_models import load_base_model, resolve_base_model

    kwargs = {} if dtype is None else {"dtype": dtype}
    model, tokenizer, _ = load_base_model(resolve_base_model(name), **kwargs)
    if dims is None:
        return model, tokenizer
    from transformers import AutoModelForCausalLM

    config = model.config
    del model
    for key, value in DIMS[dims].items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    return model, tokenizer


def decoder(model):
    """The decoder under a causal LM: every trainer's forward passes go through it."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "layers") else model


class Meter:
    """Counts the non-padding tokens the model's forward passes receive; times the steps."""

    def __init__(self, model, warmup: int) -> None:
        self.tokens = 0
        self.warmup = warmup
        self.marks: list[tuple[float, int]] = []  # (time, tokens so far) at each step's end
        self.parameters = sum(p.numel() for p in model.parameters())  # the base model's
        decoder(model).register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2 and mask.shape == ids.shape:
            self.tokens += int(mask.sum())
        else:
            self.tokens += int(ids.numel())

    def step_end(self) -> None:
        sync()
        self.marks.append((time.perf_counter(), self.tokens))

    def result(self) -> dict:
        import torch

        (t0, n0), (t1, n1) = self.marks[self.warmup - 1], self.marks[-1]
        gpu = torch.cuda.is_available()
        return {
            "steps": len(self.marks) - self.warmup,
            "tokens": n1 - n0,
            "seconds": t1 - t0,
            "tokens_per_second": (n1 - n0) / (t1 - t0),
            "parameters": self.parameters,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if gpu else None,
        }


def run_convtune(jsonl: Path, options: dict, steps: int, warmup: int, setup: dict) -> dict:
    from convtune.local.loss_masks import tokenize_file
    from convtune.local.training import TrainConfig, train

    model, tokenizer = load_model(setup["model"], setup["dims"])
    examples, _ = tokenize_file(jsonl, tokenizer, max_length=1024)
    meter = Meter(model, warmup)
    config = TrainConfig(
        batch_size=setup["batch_size"],
        learning_rate=2e-4,
        lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
        lora_targets=LORA["target_modules"],
        max_steps=warmup + steps,
        **options,
        **setup["convtune"],
    )
    result = train(model, tokenizer, examples, None, config, on_metrics=lambda m: meter.step_end())
    return {
        **meter.result(),
        "final_train_loss": result.train_loss,
        "precision": result.precision,
        "device": result.device,
    }


def run_trl(jsonl: Path, options: dict, steps: int, warmup: int, setup: dict) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    options = dict(options)
    dtype = getattr(torch, options.pop("model_dtype", "float32"))
    model, tokenizer = load_model(setup["model"], setup["dims"], dtype=dtype)
    data = datasets.load_dataset("json", data_files=str(jsonl), split="train")
    meter = Meter(model, warmup)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.step_end()

    if options.get("packing") and options.get("per_device_train_batch_size") == 1:
        options["per_device_train_batch_size"] = max(1, setup["batch_size"] // 8)  # rows of 1024
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
            use_cpu=not torch.cuda.is_available(),
            **{"max_length": 1024, "per_device_train_batch_size": setup["batch_size"], **options},
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
    convtune = [str(CONVTUNE)] if CONVTUNE.exists() else [sys.executable, "-m", "convtune.cli.main"]
    subprocess.run(
        [*convtune, "prepare", str(csv), "-o", str(folder), "--force"],
        check=True,
        capture_output=True,
    )
    return folder / f"{csv.stem}.train.jsonl", folder / f"{csv.stem}.valid.jsonl"


def child(name: str, jsonl: Path, args: argparse.Namespace) -> dict:
    python = str(PYTHON) if PYTHON.exists() else sys.executable
    command = [python, __file__, "--child", name, "--train-file", str(jsonl),
               "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--setup", json.dumps(setup_of(args))]  # fmt: skip
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def setup_of(args: argparse.Namespace) -> dict:
    """What every run of this benchmark shares: model, batch, device, convtune's options."""
    convtune = {
        name: getattr(args, name)
        for name in ("attention", "cross_entropy", "micro_batch_tokens", "quantize_base")
        if getattr(args, name) is not None
    }
    if args.compile:
        convtune["compile"] = True
    return {
        "model": args.model,
        "dims": args.config_dims,
        "batch_size": args.batch_size,
        "device": args.device,
        "peak_tflops": args.peak_tflops,
        "convtune": convtune,
    }


def mfu(r: dict) -> float | None:
    """Model FLOPs utilisation: 6 x parameters x tokens/s over the peak (None: no peak)."""
    peak = r.get("peak_tflops")
    return 6 * r["parameters"] * r["tokens_per_second"] / (peak * 1e12) if peak else None


def table(results: dict[str, dict]) -> str:
    base = results.get("trl-default-fp32", {}).get("tokens_per_second")
    trl = {k: v for k, v in results.items() if k.startswith("trl")}
    best_trl = max(trl, key=lambda k: trl[k]["tokens_per_second"]) if trl else None
    gpu = any(r.get("peak_gpu_mb") is not None for r in results.values())
    memory = "peak GPU memory" if gpu else "peak RSS"
    lines = [
        f"| configuration | tokens/s | MFU | vs TRL defaults fp32 | vs TRL's best | {memory} |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        tps = r["tokens_per_second"]
        vs_base = f"{tps / base:.1f}x" if base else "-"
        vs_best = f"{tps / trl[best_trl]['tokens_per_second']:.2f}x" if best_trl else "-"
        utilisation = f"{mfu(r):.1%}" if mfu(r) is not None else "-"
        peak = r["peak_gpu_mb"] if gpu else r["peak_rss_mb"]
        lines.append(
            f"| {LABELS[name]} | {tps:,.0f} | {utilisation} | {vs_base} | {vs_best} |"
            f" {peak:,.0f} MB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=EXAMPLE, help="a spreadsheet to prepare")
    parser.add_argument("--jsonl", type=Path, help="a prepared chat JSONL (instead of --data)")
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
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--model", default=MODEL, help="a base model's name or folder")
    parser.add_argument("--config-dims", choices=list(DIMS), help="SmolLM2 sizes, random weights")
    parser.add_argument("--batch-size", type=int, default=BATCH, help="examples per step")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak bf16 TFLOPS (MFU)")
    parser.add_argument("--attention", choices=("auto", "segments", "varlen", "flash", "flex"))
    parser.add_argument("--cross-entropy", choices=("auto", "plain", "chunked", "liger"))
    parser.add_argument("--compile", action="store_true", help="convtune: compile=True")
    parser.add_argument("--micro-batch-tokens", type=int)
    parser.add_argument("--quantize-base", choices=("none", "4bit"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--train-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--setup", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one run, one configuration: print its result as JSON
        import torch

        name, options, setup = args.child, CONFIGS[args.child], args.setup
        if setup["device"] == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here")
        run = run_convtune if name.startswith("convtune") else run_trl
        before = calibrate()
        result = run(args.train_file, options, args.steps, args.warmup, setup)
        facts = device_facts(setup["peak_tflops"])
        print(json.dumps({**result, **facts, "calibration_gflops": [before, calibrate()]}))
        return

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations: {unknown} (known: {', '.join(CONFIGS)})")
    with tempfile.TemporaryDirectory() as tmp:
        if args.jsonl:
            train_file, valid_file, source = args.jsonl, None, args.jsonl.name
        else:
            train_file, valid_file = prepare(args.data, Path(tmp))
            source = args.data.name
        n = sum(1 for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip())
        model = args.model + (f" with {args.config_dims} dimensions" if args.config_dims else "")
        print(
            f"{source}: {n} training examples; {model}; LoRA r16 all-linear;"
            f" batch {args.batch_size}; {args.warmup} warm-up + {args.steps} timed steps;"
            f" best of {args.repeat}; device {args.device}; {os.cpu_count()} CPUs,"
            f" {platform.processor() or platform.machine()}",
            flush=True,
        )
        results: dict[str, dict] = {}
        for round_ in range(args.repeat):
            for name in names:
                r = child(name, train_file, args)
                gflops = "/".join(f"{g:.0f}" for g in r["calibration_gflops"])
                memory = (
                    f"peak GPU {r['peak_gpu_mb']:.0f} MB" if r.get("peak_gpu_mb") is not None
                    else f"peak RSS {r['peak_rss_mb']:.0f} MB"
                )  # fmt: skip
                utilisation = f", MFU {mfu(r):.1%}" if mfu(r) is not None else ""
                print(
                    f"  round {round_ + 1} {name}: {r['tokens_per_second']:.1f} tokens/s"
                    f"{utilisation}, {memory} on {r['device_name']}"
                    f" (machine: {gflops} GFLOPS before/after)",
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
        quality_rows = quality(train_file, valid_file) if args.quality and valid_file else None
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
