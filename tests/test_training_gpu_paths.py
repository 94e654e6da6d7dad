"""The trainer's GPU paths, tested on a CPU: every attention kernel computes what the per-example
products compute and never attends across examples; the chunked cross-entropy equals the plain
one; the kernels, losses, token budgets, QLoRA and compilation are chosen and refused as the
device allows.

What runs on a CPU runs for real: the segments kernel, FlexAttention (PyTorch runs it forwards
only on a CPU; for its gradients the tests lift that guard and run its eager implementation),
the chunked cross-entropy. The CUDA-only kernels (PyTorch's varlen, flash-attn) are replaced by
a reference with flash attention's documented semantics (cumulative lengths, a window of keys
before and after each query), so what is tested is convtune's side of the call: layouts, bounds,
window, scale, grouped-query heads.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import types

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

import torch.nn.functional as F  # noqa: E402

from convtune.errors import OptionError  # noqa: E402
from convtune.local.loss_masks import IGNORE, TokenizedExample  # noqa: E402
from convtune.local.training import TrainConfig, adapters, attention, kernels, loop, losses, train  # noqa: E402  # noqa: E402
from convtune.local.training.batching import Examples  # noqa: E402
from convtune.local.training.runtime import (  # noqa: E402
    Distributed,
    activation_bytes_per_token,
    default_micro_batch_tokens,
)
from convtune.service.training_options import TrainOptions  # noqa: E402

from .tiny_models import make_tiny_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
CPU = torch.device("cpu")
LENGTHS = [7, 12, 4, 9]  # one packed row of four examples


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """FlexAttention compiles its score and mask functions even eagerly: a soft-cap or a length
    seen by an earlier test must not make them dynamic in the next (one run has one model)."""
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


# -- a reference for the CUDA-only kernels ---------------------------------------------------------


def flash_reference(q, k, v, cu, max_length, scale, window_size, softcap=0.0):
    """Attention over (T, heads, dim) rows cut at `cu`, as flash attention defines it: query i
    sees key j when i - left <= j <= i + right (-1: no bound), soft-capped scores."""
    left, right = window_size
    bounds = cu.tolist()
    longest = max(b - a for a, b in itertools.pairwise(bounds))
    assert longest <= max_length < 2 * longest  # a bound, rounded up to a power of two
    outputs = []
    for start, end in itertools.pairwise(bounds):
        qs, ks, vs = q[start:end], k[start:end], v[start:end]
        groups = qs.shape[1] // ks.shape[1]
        ks, vs = ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        i = torch.arange(end - start)[:, None]
        j = torch.arange(end - start)[None, :]
        visible = torch.ones(end - start, end - start, dtype=torch.bool)
        if right >= 0:
            visible &= j <= i + right
        if left >= 0:
            visible &= j >= i - left
        scores = scores.masked_fill(~visible, float("-inf"))
        outputs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), vs))
    return torch.cat(outputs)


def fake_torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale, window_size, enable_gqa):
    assert cu_q is cu_k and max_q == max_k and cu_q.dtype == torch.int32
    assert enable_gqa == (q.shape[1] != k.shape[1])
    return flash_reference(q, k, v, cu_q, max_q, scale, window_size)


def fake_flash_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, dropout_p, softmax_scale, causal,
                    window_size, softcap=0.0):  # fmt: skip
    assert causal and dropout_p == 0.0 and cu_q is cu_k
    left, _ = window_size
    return flash_reference(q, k, v, cu_q, max_q, softmax_scale, (left, 0), softcap)


@pytest.fixture
def every_kernel(monkeypatch):
    """Every kernel runnable here: the CUDA ones by reference, flex with gradients."""
    from torch.nn.attention import flex_attention

    monkeypatch.setattr(kernels, "_varlen_attn", lambda: fake_torch_varlen)
    monkeypatch.setattr(kernels, "_flash_attn_varlen", lambda: fake_flash_attn)
    monkeypatch.setattr(flex_attention, "_validate_device", lambda *tensors: None)
    return attention.KERNELS


# -- the kernels alone -----------------------------------------------------------------------------


def _qkv(heads=4, kv_heads=2, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    total = sum(LENGTHS)
    q = torch.randn(1, heads, total, dim, generator=generator, requires_grad=True)
    k = torch.randn(1, kv_heads, total, dim, generator=generator, requires_grad=True)
    v = torch.randn(1, kv_heads, total, dim, generator=generator, requires_grad=True)
    return q, k, v


def _attend(kernel, q, k, v, window=None, softcap=None):
    row = attention.PackedRow(LENGTHS, kernel, CPU, windows=(None, window))
    return getattr(kernels, kernel)(q, k, v, row, 0.3, window, softcap, 0.0)


@pytest.mark.parametrize(("window", "softcap"), [(None, None), (3, None), (None, 2.0), (5, 2.0)])
def test_every_kernel_computes_the_same_attention_and_gradients(every_kernel, window, softcap):
    q, k, v = _qkv()
    expected = _attend("segments", q, k, v, window, softcap)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    assert expected.shape == (1, sum(LENGTHS), 4, 8)
    for kernel in every_kernel:
        if kernel == "varlen" and softcap:  # varlen has none: refused by kernel_problem
            continue
        out = _attend(kernel, q, k, v, window, softcap)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5, msg=kernel)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=kernel)


@pytest.mark.parametrize("kernel", attention.KERNELS)
def test_no_position_attends_across_examples_or_ahead(every_kernel, kernel):
    q, k, v = _qkv()
    with torch.no_grad():
        before = _attend(kernel, q, k, v)
        starts = [sum(LENGTHS[:n]) for n in range(len(LENGTHS))]
        second = slice(starts[1], starts[2])
        k2, v2 = k.clone(), v.clone()
        k2[:, :, second] += 3.0
        v2[:, :, second] -= 3.0
        after = _attend(kernel, q, k2, v2)
        changed = (after - before).abs().amax(dim=(0, 2, 3)) > 1e-6
        assert changed[second].all()  # the second example sees itself...
        assert not changed[: starts[1]].any() and not changed[starts[2] :].any()  # ...only
        # and no token sees a later one of its own example
        k3 = k.clone()
        k3[:, :, starts[2] - 1] += 3.0  # the second example's last token
        later = _attend(kernel, q, k3, v)
        moved = (later - before).abs().amax(dim=(0, 2, 3)) > 1e-6
        assert moved.nonzero().flatten().tolist() == [starts[2] - 1]


def test_flex_runs_forwards_on_a_cpu_without_lifting_anything():
    q, k, v = (t.detach() for t in _qkv())
    with torch.no_grad():
        torch.testing.assert_close(_attend("flex", q, k, v), _attend("segments", q, k, v))


# -- the kernels in a model: one packed row against each example alone ------------------------------


def _tiny(kind: str):
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    common = dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(1)
        if kind == "llama":
            model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True))
        else:  # sliding window on every other layer, soft-capped scores
            config = Gemma2Config(
                **common, head_dim=8, sliding_window=3, attn_logit_softcapping=4.0,
                final_logit_softcapping=None, query_pre_attn_scalar=8,
            )  # fmt: skip
            model = Gemma2ForCausalLM(config)
    model.set_attn_implementation("eager")  # the reference: each example alone, plain attention
    return model


def _examples(vocab=96, seed=3):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for n in LENGTHS:
        ids = torch.randint(3, vocab, (n,), generator=generator).tolist()
        labels = [IGNORE] * (n // 2) + ids[n // 2 :]  # a loss on the second half
        out.append(TokenizedExample(ids, labels))
    return out


def _alone(model, examples):
    """Summed loss of each example through the model's own attention, one at a time."""
    total = 0.0
    for e in examples:
        logits = model(input_ids=torch.tensor([e.input_ids])).logits[0]
        targets = torch.tensor([*e.labels[1:], IGNORE])
        total = total + F.cross_entropy(logits.float(), targets, reduction="sum")
    return total


def _packed(model, data, kernel, loss="plain"):
    config = TrainConfig(lora=False, precision="fp32", attention="segments", cross_entropy=loss)
    ctx = loop._Context.make(model, config, Distributed(1, 0, 0, 1), CPU, None, training=True)
    assert ctx.packed
    ctx = dataclasses.replace(ctx, kernel=kernel)
    return loop._forward(model, data, data.all(), ctx)


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_a_packed_row_trains_as_its_examples_alone_on_every_kernel(every_kernel, kind):
    model = _tiny(kind)
    examples = _examples()
    reference = _alone(model, examples)
    expected = {n: g for n, g in zip(
        [n for n, _ in model.named_parameters()],
        torch.autograd.grad(reference, list(model.parameters())), strict=True,
    )}  # fmt: skip
    model = adapters.prepare_model(model, TrainConfig(lora=False, precision="fp32"), CPU, None)
    data = Examples(examples)
    try:
        for kernel in every_kernel:
            if kernel == "varlen" and kind == "gemma2":
                continue  # soft-capping: varlen is refused for this model
            model.zero_grad(set_to_none=True)
            loss, _, count = _packed(model, data, kernel)
            loss.backward()
            assert loss.item() == pytest.approx(reference.item(), rel=1e-5), kernel
            assert count.item() == sum(n - n // 2 for n in LENGTHS)  # labels of the second half
            for name, p in model.named_parameters():
                torch.testing.assert_close(p.grad, expected[name], atol=1e-5, rtol=1e-4)
    finally:
        adapters.restore_model(model)


def test_kernel_problems_say_why():
    llama, gemma = _tiny("llama").config, _tiny("gemma2").config
    problem = attention.kernel_problem
    assert problem("segments", CPU, torch.float32, llama) is None
    assert problem("varlen", CPU, torch.bfloat16, llama) == "needs a CUDA GPU"
    assert "no CPU backward" in problem("flex", CPU, torch.float32, llama)
    assert problem("flex", CPU, torch.float32, llama, training=False) is None
    assert attention.choose_kernel("auto", CPU, torch.bfloat16, gemma) == "segments"
    with pytest.raises(OptionError, match=r"^attention flash: needs a CUDA GPU \(attention auto"):
        attention.choose_kernel("flash", CPU, torch.bfloat16, llama)
    assert attention.model_windows(gemma) == (None, 3)
    assert attention.model_windows(llama) == (None,)


def test_on_a_gpu_auto_takes_the_first_kernel_that_runs(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    llama, gemma = _tiny("llama").config, _tiny("gemma2").config
    has = {"torch.nn.attention.varlen": True, "flash_attn": False}
    monkeypatch.setattr(
        attention.importlib.util, "find_spec", lambda name: object() if has[name] else None
    )
    choose = attention.choose_kernel
    assert choose("auto", cuda, torch.bfloat16, llama) == "varlen"
    assert choose("auto", cuda, torch.bfloat16, gemma) == "flex"  # soft-capping: not varlen
    assert choose("auto", cuda, torch.float32, llama) == "flex"  # fp32: no flash kernel
    has["flash_attn"] = True
    assert choose("auto", cuda, torch.bfloat16, gemma) == "flash"
    has["torch.nn.attention.varlen"] = False
    assert choose("auto", cuda, torch.bfloat16, llama) == "flash"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert choose("auto", cuda, torch.bfloat16, llama) == "flex"
    with pytest.raises(OptionError, match="needs an Ampere or newer GPU"):
        choose("flash", cuda, torch.bfloat16, llama)


# -- the cross-entropy -----------------------------------------------------------------------------


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_the_chunked_cross_entropy_equals_the_plain_one(monkeypatch, precision):
    monkeypatch.setattr(losses, "CHUNK_VALUES", 7 * 50)  # chunks of 7 rows: 3 chunks and a bit
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 16, generator=generator, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, requires_grad=True)
    targets = torch.randint(0, 50, (23,), generator=generator)
    results = []
    for function in (
        lambda: losses.plain_cross_entropy(F.linear(hidden, weight), targets),
        lambda: losses.chunked_cross_entropy(hidden, weight, targets),
    ):
        with torch.autocast("cpu", dtype=precision, enabled=precision is not None):
            loss, correct = function()
        grads = torch.autograd.grad(loss * 0.5, (hidden, weight))
        results.append((loss, correct, grads))
    (plain, plain_correct, plain_grads), (chunked, chunked_correct, chunked_grads) = results
    assert chunked.dtype == torch.float32 and chunked_correct.item() == plain_correct.item()
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if precision is None else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(chunked, plain, **tolerance)
    for got, want in zip(chunked_grads, plain_grads, strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tolerance)
    # evaluation (no gradient: the plain chunk loop, not the autograd function) gives the loss
    # and the count that training gives, in the same precision
    with torch.no_grad(), torch.autocast("cpu", dtype=precision, enabled=precision is not None):
        loss, correct = losses.chunked_cross_entropy(hidden, weight, targets)
    assert loss.dtype == torch.float32 and correct.item() == chunked_correct.item()
    assert loss.item() == pytest.approx(chunked.item(), rel=1e-6)


def test_chunked_training_matches_plain_training(every_kernel):
    model = _tiny("llama")
    examples = _examples()
    model = adapters.prepare_model(model, TrainConfig(lora=False, precision="fp32"), CPU, None)
    data = Examples(examples)
    try:
        results = {}
        for loss_kind in ("plain", "chunked"):
            model.zero_grad(set_to_none=True)
            loss, correct, _ = _packed(model, data, "segments", loss_kind)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            results[loss_kind] = (loss.item(), correct.item(), grads)
        (plain, plain_correct, plain_grads) = results["plain"]
        (chunked, chunked_correct, chunked_grads) = results["chunked"]
        assert chunked == pytest.approx(plain, rel=1e-5) and chunked_correct == plain_correct
        for name, grad in plain_grads.items():  # the tied output layer's gradient included
            torch.testing.assert_close(chunked_grads[name], grad, atol=1e-5, rtol=1e-4)
    finally:
        adapters.restore_model(model)


def test_the_liger_loss_is_called_for_a_sum_and_its_token_accuracy(monkeypatch):
    calls = []

    class FakeLiger(torch.nn.Module):
        def __init__(self, reduction="mean", return_token_accuracy=False):
            super().__init__()
            calls.append((reduction, return_token_accuracy))

        def forward(self, weight, hidden, target):
            logits = hidden @ weight.t()
            accuracy = (logits.argmax(-1) == target).float().mean()
            loss = F.cross_entropy(logits, target, reduction="sum")
            return types.SimpleNamespace(loss=loss, token_accuracy=accuracy)

    module = types.ModuleType("liger_kernel.transformers.fused_linear_cross_entropy")
    module.LigerFusedLinearCrossEntropyLoss = FakeLiger
    monkeypatch.setitem(sys.modules, module.__name__, module)
    hidden, weight = torch.randn(10, 8), torch.randn(20, 8)
    targets = torch.randint(0, 20, (10,))
    loss, correct = losses.liger_cross_entropy(hidden, weight, targets)
    plain, plain_correct = losses.plain_cross_entropy(hidden @ weight.t(), targets)
    assert calls == [("sum", True)] and losses._liger_has_accuracy()
    assert loss.item() == pytest.approx(plain.item()) and correct.item() == plain_correct.item()


def test_losses_are_chosen_by_device_and_refused_with_the_reason():
    model = _tiny("llama")
    assert losses.choose_loss("auto", CPU, model) == "plain"
    assert losses.choose_loss("chunked", CPU, model) == "chunked"
    with pytest.raises(OptionError, match=r"^cross_entropy liger: liger-kernel runs on CUDA only"):
        losses.choose_loss("liger", CPU, model)
    gemma = _tiny("gemma2")
    gemma.config.final_logit_softcapping = 30.0
    assert losses.output_weight(gemma) is None
    with pytest.raises(OptionError, match="needs a plain output layer"):
        losses.choose_loss("chunked", CPU, gemma)


# -- token budgets, options, QLoRA and compilation ----------------------------------------------------


def test_a_gpu_pass_takes_tens_of_thousands_of_tokens_where_they_fit(monkeypatch):
    from transformers import LlamaConfig

    small = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    big = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24)
    # the H200 figures: 4,096 tokens a pass took about 4 GB (135M) and 13.7 GB (1.7B)
    assert activation_bytes_per_token(small, torch.bfloat16) * 4096 / 1e9 == pytest.approx(4, 0.1)
    assert activation_bytes_per_token(big, torch.bfloat16) * 4096 / 1e9 == pytest.approx(13.7, 0.1)
    assert default_micro_batch_tokens(small, CPU, torch.bfloat16) == 4096
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (130 * 2**30, 140 * 2**30))
    assert default_micro_batch_tokens(small, cuda, torch.bfloat16) == 65536
    assert 16384 <= default_micro_batch_tokens(big, cuda, torch.bfloat16) <= 24576
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2**30, 16 * 2**30))
    assert default_micro_batch_tokens(big, cuda, torch.bfloat16) == 4096  # the least


def test_gpu_options_are_checked_with_every_other_option():
    with pytest.raises(OptionError) as caught:
        TrainConfig(attention="fast", cross_entropy="fused", quantize_base="8bit", lora=True)
    for words in ("attention must be one of", "cross_entropy must be", "quantize_base must be"):
        assert words in str(caught.value)
    with pytest.raises(OptionError, match=r"QLoRA.* not with full"):
        TrainConfig(quantize_base="4bit", lora=False)
    with pytest.raises(OptionError, match="micro_batch_tokens"):
        TrainConfig(micro_batch_tokens=0)
    assert TrainConfig.from_options(TrainOptions(quantize_base="4bit"), 10).quantize_base == "4bit"


def _train_tiny(tiny_model, **options):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = TrainConfig(
        n_epochs=1, batch_size=2, learning_rate=1e-2, precision="fp32", threads=1, **options
    )
    return train(model, None, _examples(vocab=300), None, config)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize_base": "4bit"}, r"^quantize_base 4bit: QLoRA needs a CUDA GPU and bitsandb"),
        ({"attention": "varlen"}, r"^attention varlen: needs a CUDA GPU"),
        ({"attention": "flex"}, r"^attention flex: FlexAttention trains on CUDA only"),
        ({"compile": True}, r"^compile: not with the segments attention"),
    ],
)
def test_what_needs_a_gpu_is_refused_on_a_cpu_in_one_line(tiny_model, options, message):
    with pytest.raises(OptionError, match=message):
        _train_tiny(tiny_model, **options)


def test_qlora_swaps_the_frozen_layers_and_gives_the_float_ones_back(tiny_model, monkeypatch):
    class Rounded(torch.nn.Linear):  # stands in for bitsandbytes' 4-bit layer
        pass

    def fake_4bit(layer, precision):
        copy = Rounded(layer.in_features, layer.out_features, bias=layer.bias is not None)
        copy.weight = torch.nn.Parameter(layer.weight.data.bfloat16().float(), requires_grad=False)
        return copy

    monkeypatch.setattr(adapters, "quantization_problem", lambda device: None)
    monkeypatch.setattr(adapters, "_linear_4bit", fake_4bit)
    seen = []
    real = loop.TrainingLoop._step

    def step(self, batch):
        seen.extend(type(m.base_layer) for m in self.model.modules() if hasattr(m, "lora_A"))
        return real(self, batch)

    monkeypatch.setattr(loop.TrainingLoop, "_step", step)
    result = _train_tiny(tiny_model, quantize_base="4bit")
    assert seen and set(seen) == {Rounded}  # every adapted layer trained on the stand-in
    layers = [m.base_layer for m in result.model.modules() if hasattr(m, "lora_A")]
    assert layers and all(type(layer) is torch.nn.Linear for layer in layers)
    assert any(p.abs().sum() > 0 for n, p in result.model.named_parameters() if "lora_B" in n)


def test_compiled_layers_train_as_uncompiled_ones(tiny_model, monkeypatch, every_kernel):
    """Compilation is wired around each decoder layer (dynamo traces convtune's attention; the
    eager backend keeps the test fast) and changes nothing in what is computed."""
    real_compile = torch.compile
    compiled = []

    def eager_compile(function, **options):
        compiled.append(options)
        return real_compile(function, backend="eager", **options)

    monkeypatch.setattr(torch, "compile", eager_compile)
    monkeypatch.setattr(attention, "kernel_problem", lambda *args, **kwargs: None)
    plain = _train_tiny(tiny_model, attention="varlen")
    fast = _train_tiny(tiny_model, attention="varlen", compile=True)
    assert compiled and all(options == {} for options in compiled)
    assert fast.train_loss == pytest.approx(plain.train_loss, rel=1e-5)
    layers = fast.model.get_base_model().get_decoder().layers
    assert all(layer._compiled_call_impl is None for layer in layers)  # uncompiled after
