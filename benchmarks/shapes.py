"""Model shapes, offline tokenizers, random-weight models built on the device, and rooflines.

A :class:`Shape` holds what decides a model's cost: width, depth, MLP width, heads, KV heads,
head size, vocabulary (the unembedding is a large part of a small model's decode step) and,
for Gemma-3, the sliding-window layout. :func:`build_tokenizer` makes the tokenizer and
:func:`build_model` a random Hugging Face model of that shape directly on the device, in its
dtype (a 7B random init on the CPU takes minutes; on the GPU, seconds).

The tokenizer is word-level (one token per word or punctuation run, like a real tokenizer's
token counts for English prompts) over every word the benchmarks use, padded with
``<unusedN>`` entries up to the shape's vocabulary size, with BOS, EOS, PAD, UNK, the
end-of-turn tokens and a chat template (Gemma-3's turns for Gemma shapes, Llama-3's headers
for Llama shapes). It is saved to a folder and reloaded, so every library that re-opens a
tokenizer by ``name_or_path`` finds it offline.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Shape:
    """The cost-relevant dimensions of one model (``vocab=0``: the tokenizer's own size)."""

    name: str
    arch: str  # "llama" or "gemma3"
    like: str  # the real model this shape copies
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab: int
    tied: bool
    max_positions: int
    rope_theta: float = 10_000.0
    sliding_window: int = 0  # gemma3: window of the local layers
    global_every: int = 0  # gemma3: every k-th layer is global (full attention)

    def layer_types(self) -> list[str]:
        k = self.global_every
        return [
            "full_attention" if k and (i + 1) % k == 0 else "sliding_attention"
            for i in range(self.n_layers)
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# fmt: off
_LLAMA: dict[str, Any] = {"arch": "llama"}
_GEMMA: dict[str, Any] = {"arch": "gemma3", "tied": True, "rope_theta": 1_000_000.0}
SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("tiny", like="a 4-block test model", d_model=64, n_layers=4, n_heads=4,
              n_kv_heads=2, d_head=16, d_mlp=128, vocab=0, tied=False, max_positions=512,
              **_LLAMA),
        Shape("tiny-gemma3", like="a 4-block test model", d_model=64, n_layers=4, n_heads=4,
              n_kv_heads=1, d_head=16, d_mlp=128, vocab=0, max_positions=512, sliding_window=16,
              global_every=4, **_GEMMA),
        Shape("gemma3-1b", like="google/gemma-3-1b-it", d_model=1152, n_layers=26, n_heads=4,
              n_kv_heads=1, d_head=256, d_mlp=6912, vocab=262_144, max_positions=32_768,
              sliding_window=512, global_every=6, **_GEMMA),
        Shape("llama3-1b", like="meta-llama/Llama-3.2-1B-Instruct (no RoPE scaling)",
              d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_head=64, d_mlp=8192,
              vocab=128_256, tied=True, max_positions=8192, rope_theta=500_000.0, **_LLAMA),
        Shape("llama-7b", like="meta-llama/Llama-2-7b-chat-hf", d_model=4096, n_layers=32,
              n_heads=32, n_kv_heads=32, d_head=128, d_mlp=11_008, vocab=32_000, tied=False,
              max_positions=4096, **_LLAMA),
    )
}
# fmt: on
"""Shapes by name. ``llama3-1b`` is the shape of the issue's measured baselines."""


# --- tokenizer ------------------------------------------------------------------------------

GEMMA_CHAT = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' }}"
    "{{ m['content'] + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
LLAMA_CHAT = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ m['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
# fmt: off
# style -> (pad, eos, bos, unk, turn markers (the last one ends a turn), template)
STYLES: dict[str, tuple[str, str, str, str, tuple[str, ...], str]] = {
    "gemma3": ("<pad>", "<eos>", "<bos>", "<unk>", ("<start_of_turn>", "<end_of_turn>"),
               GEMMA_CHAT),
    "llama": ("<|pad|>", "<|end_of_text|>", "<|begin_of_text|>", "<|unk|>",
              ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), LLAMA_CHAT),
}
# fmt: on


def concept_words(n: int) -> list[str]:
    """``n`` distinct concept words: the shipped concept lists first, then ``conceptK``."""
    lists = json.loads(resources.files("mechintro").joinpath("data/concepts.json").read_text())
    words: list[str] = []
    for key in ("lindsey_concepts", "fonseca_train", "fonseca_heldout"):
        words += [w for w in lists[key] if w not in words]
    words += [f"concept{i}" for i in range(max(0, n - len(words)))]
    return words[:n]


def vocabulary_texts(n_concepts: int) -> list[str]:
    """Every text the benchmarks feed the tokenizer (so no word becomes ``<unk>``)."""
    from mechintro.experiments.protocols.detection import FORCED_PREFILL, PREAMBLE, TRIAL_QUESTION
    from mechintro.tokens import NO_VARIANTS, YES_VARIANTS
    from mechintro.vectors import METHODS, word_list

    texts = ["user assistant model system", PREAMBLE, FORCED_PREFILL, "Ok."]
    texts += [*YES_VARIANTS, *NO_VARIANTS]
    texts += [TRIAL_QUESTION.format(n=n) for n in range(1, 21)]
    texts += [m.template.replace("{w}", "") for m in METHODS.values()]
    texts += concept_words(n_concepts) + word_list("lindsey_baseline")
    texts += word_list("fonseca_baseline")
    return texts


def build_tokenizer(folder: Path, style: str, vocab_size: int, n_concepts: int = 500) -> Any:
    """A word-level fast tokenizer with a chat template, padded to ``vocab_size``, saved to
    ``folder`` and reloaded from it. ``vocab_size=0``: the words only (rounded up to 64)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    pad, eos, bos, unk, turns, template = STYLES[style]
    vocab = {s: i for i, s in enumerate((pad, eos, bos, unk, *turns))}
    split = pre_tokenizers.Whitespace()
    for text in vocabulary_texts(n_concepts):
        for word, _ in split.pre_tokenize_str(text):
            vocab.setdefault(word, len(vocab))
    size = vocab_size or 64 * math.ceil(len(vocab) / 64)
    if len(vocab) > size:
        raise ValueError(f"{len(vocab)} words do not fit a vocabulary of {size}")
    for i in range(size - len(vocab)):
        vocab[f"<unused{i}>"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    core.pre_tokenizer = split
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        additional_special_tokens=list(turns),
        chat_template=template,
        clean_up_tokenization_spaces=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
    loaded = AutoTokenizer.from_pretrained(str(folder))
    if len(loaded) != size:
        raise RuntimeError(f"tokenizer has {len(loaded)} entries, expected {size}")
    return loaded


def stop_ids(tok: Any) -> list[int]:
    """EOS and end-of-turn ids."""
    _, eos, _, _, turns, _ = STYLES["gemma3" if "<end_of_turn>" in tok.get_vocab() else "llama"]
    return [int(tok.convert_tokens_to_ids(eos)), int(tok.convert_tokens_to_ids(turns[-1]))]


# --- models ---------------------------------------------------------------------------------


def hf_config(shape: Shape, tok: Any, attn: str) -> Any:
    """The Hugging Face config of ``shape`` with the tokenizer's size and special ids."""
    from transformers import Gemma3TextConfig, LlamaConfig

    common: dict[str, Any] = dict(
        vocab_size=len(tok),
        hidden_size=shape.d_model,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads,
        head_dim=shape.d_head,
        intermediate_size=shape.d_mlp,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=shape.tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=stop_ids(tok),
        pad_token_id=tok.pad_token_id,
    )
    cfg: Any
    if shape.arch == "llama":
        cfg = LlamaConfig(
            **common,
            rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
            architectures=["LlamaForCausalLM"],
        )
    elif shape.arch == "gemma3":
        cfg = Gemma3TextConfig(
            **common,
            query_pre_attn_scalar=shape.d_head,
            sliding_window=shape.sliding_window,
            layer_types=shape.layer_types(),
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": shape.rope_theta},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
            architectures=["Gemma3ForCausalLM"],
        )
    else:
        raise ValueError(f"unknown arch {shape.arch!r}")
    cfg._attn_implementation = attn
    return cfg


def build_model(
    shape: Shape, tok: Any, *, device: str, dtype: torch.dtype, attn: str = "sdpa", seed: int = 0
) -> Any:
    """A random ``shape`` model made directly on ``device`` in ``dtype``, in eval mode.

    The unembedding rows of the stop tokens are zeroed, so greedy decoding never stops early
    (every method generates the same number of tokens; a random row's maximum logit is > 0).
    """
    from transformers import AutoModelForCausalLM, GenerationConfig

    cfg = hf_config(shape, tok, attn)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        model.get_output_embeddings().weight[stop_ids(tok)] = 0
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=stop_ids(tok), pad_token_id=tok.pad_token_id
    )
    return model


# --- roofline -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    name: str
    bandwidth: float  # HBM bytes/s
    peak_flops: float  # dense bf16 FLOP/s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


KNOWN_GPUS = (  # (substring of the device name, HBM B/s, dense bf16 FLOP/s)
    ("H200", 4.8e12, 989e12),
    ("H100 PCIe", 2.0e12, 756e12),
    ("H100", 3.35e12, 989e12),
    ("A100", 2.0e12, 312e12),
)


def hardware(device: str, bandwidth: float | None, peak_flops: float | None) -> Hardware:
    """The roofline's numbers: given ones win, else the device's datasheet, else H100 SXM."""
    name = "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    bw, fl = 3.35e12, 989e12
    for key, b, f in KNOWN_GPUS:
        if key in name:
            bw, fl = b, f
            break
    return Hardware(name, bandwidth or bw, peak_flops or fl)


def weight_bytes(model: Any) -> int:
    """Bytes of weights one decode step reads: every parameter once (tied ones once), but not
    an untied input embedding (a step reads one row of it per sequence)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if emb is not out:
        total -= emb.numel() * emb.element_size()
    return total


def param_count(shape: Shape, vocab: int) -> int:
    """Parameters of ``shape`` with ``vocab`` entries, from the formula (checked against the
    HF model in the tests), so the roofline of any shape can be computed without building it."""
    d, f, q, kv = shape.d_model, shape.d_mlp, shape.n_heads * shape.d_head, shape.n_kv_heads
    attn = d * q + 2 * d * kv * shape.d_head + q * d
    norms = 2 * d if shape.arch == "llama" else 4 * d + 2 * shape.d_head  # gemma: +q/k norms
    layer = attn + 3 * d * f + norms
    return vocab * d * (1 if shape.tied else 2) + shape.n_layers * layer + d


def decode_weight_bytes(shape: Shape, vocab: int, elt: int = 2) -> int:
    """:func:`weight_bytes` from the formula."""
    n = param_count(shape, vocab)
    return (n - (0 if shape.tied else vocab * shape.d_model)) * elt


def _attended(shape: Shape, context: int) -> int:
    """Key positions attended per query, summed over layers (sliding windows capped)."""
    if not shape.global_every:
        return shape.n_layers * context
    types = shape.layer_types()
    return sum(
        context if t == "full_attention" else min(context, shape.sliding_window) for t in types
    )


def roofline_seconds(
    shape: Shape,
    hw: Hardware,
    wbytes: int,
    *,
    batch: int,
    prompt: int,
    shared: int,
    new_tokens: int,
    elt: int = 2,
) -> dict[str, float]:
    """Lower bound of one batched generation: each forward takes the longer of its bytes over
    the bandwidth and its FLOPs over the peak.

    Prefill: ``shared + batch·(prompt − shared)`` tokens (the shared prefix once), compute
    bound. Decode: ``new_tokens − 1`` steps (the first token comes from the prefill), each
    reading every weight once (:func:`weight_bytes`) plus the KV cache of every row.
    """
    n_weights = wbytes / elt
    kv_per_pos = 2 * shape.n_kv_heads * shape.d_head * elt  # keys + values, one layer
    attn_flops_per_key = 4 * shape.n_heads * shape.d_head  # QK^T and AV, one layer

    def forward(tokens: int, context: int, cached_rows: int) -> float:
        keys = _attended(shape, context)
        flops = 2 * n_weights * tokens + attn_flops_per_key * tokens * keys
        kv = kv_per_pos * keys * cached_rows  # the KV cache a decode step reads
        return max((wbytes + kv) / hw.bandwidth, flops / hw.peak_flops)

    prefill = forward(shared + batch * (prompt - shared), prompt // 2, 0)
    decode = sum(forward(batch, prompt + s, batch) for s in range(1, new_tokens))
    return {"prefill": prefill, "decode": decode, "total": prefill + decode}
