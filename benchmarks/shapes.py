"""Model shapes, offline tokenizers, random-weight models built on the device, and rooflines.

A :class:`Shape` is the Hugging Face config of a model to build; what decides its cost (width,
depth, MLP width, heads, KV heads, head size, vocabulary: the unembedding is a large part of a
small model's decode step; for Gemma-3, the sliding-window layout) is mechintro's
:class:`~mechintro.memory.ModelShape` of that config. :func:`build_tokenizer` makes the
tokenizer and :func:`build_model` a random Hugging Face model of that shape directly on the
device, in its dtype (a 7B random init on the CPU takes minutes; on the GPU, seconds).

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

from mechintro.memory import ModelShape


@dataclass(frozen=True)
class Shape:
    """A random-weight model to build: its name, the real model whose shape it copies, and its
    Hugging Face config fields (config.json's names; ``vocab_size`` 0 or absent: the
    tokenizer's own size, which :func:`hf_config` fills in with the special token ids).

    What decides its cost (width, depth, heads, KV heads, head size, MLP width, vocabulary,
    the sliding-window layout) is read from that config by mechintro's public
    :class:`~mechintro.memory.ModelShape` (:meth:`dims`), as for any checkpoint.
    """

    name: str
    like: str
    config: dict[str, Any]

    @property
    def arch(self) -> str:
        """``"gemma3"`` or ``"llama"``: the tokenizer style (chat template, special tokens)."""
        return "gemma3" if self.config["model_type"] == "gemma3_text" else "llama"

    @property
    def vocab(self) -> int:
        """The vocabulary size asked for (0: the tokenizer's own)."""
        return int(self.config.get("vocab_size") or 0)

    def dims(self, vocab: int = 0) -> ModelShape:
        """The :class:`~mechintro.memory.ModelShape` of this config with ``vocab`` entries (0:
        the shape's own, or 256 where that is the tokenizer's: only ``vocab`` and ``n_params``
        depend on it). Its parameter count is exact (mechintro tests it against the HF models)."""
        return ModelShape.from_config({**self.config, "vocab_size": vocab or self.vocab or 256})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "like": self.like, **self.config}


def llama_config(*, rope_theta: float = 10_000.0, **fields: Any) -> dict[str, Any]:
    """A Llama config's fields: ``fields`` (config.json names) and the RoPE base."""
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "rope_parameters": rope,
        **fields,
    }


def gemma3_config(*, global_every: int, **fields: Any) -> dict[str, Any]:
    """A Gemma-3 text config's fields: ``fields`` (config.json names), every
    ``global_every``-th layer global (full attention) and the others sliding, tied embeddings,
    RoPE bases 1e6 (global) and 1e4 (local), and the query scale of the head size."""
    n = fields["num_hidden_layers"]
    types = [
        "full_attention" if (i + 1) % global_every == 0 else "sliding_attention" for i in range(n)
    ]
    rope = {
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    }
    return {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "tie_word_embeddings": True,
        "layer_types": types,
        "rope_parameters": rope,
        "query_pre_attn_scalar": fields["head_dim"],
        **fields,
    }


def _dims(d: int, layers: int, heads: int, kv: int, head: int, mlp: int) -> dict[str, int]:
    return {
        "hidden_size": d,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head,
        "intermediate_size": mlp,
    }


# fmt: off
SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("tiny", "a 4-block test model", llama_config(
            **_dims(64, 4, 4, 2, 16, 128), tie_word_embeddings=False,
            max_position_embeddings=512)),
        Shape("tiny-gemma3", "a 4-block test model", gemma3_config(
            **_dims(64, 4, 4, 1, 16, 128), max_position_embeddings=512, sliding_window=16,
            global_every=4)),
        Shape("gemma3-1b", "google/gemma-3-1b-it", gemma3_config(
            **_dims(1152, 26, 4, 1, 256, 6912), vocab_size=262_144,
            max_position_embeddings=32_768, sliding_window=512, global_every=6)),
        Shape("llama3-1b", "meta-llama/Llama-3.2-1B-Instruct (no RoPE scaling)", llama_config(
            **_dims(2048, 16, 32, 8, 64, 8192), vocab_size=128_256, tie_word_embeddings=True,
            max_position_embeddings=8192, rope_theta=500_000.0)),
        Shape("llama-7b", "meta-llama/Llama-2-7b-chat-hf", llama_config(
            **_dims(4096, 32, 32, 32, 128, 11_008), vocab_size=32_000,
            tie_word_embeddings=False, max_position_embeddings=4096)),
        Shape("gemma3-27b", "google/gemma-3-27b-it (its text model)", gemma3_config(
            **_dims(5376, 62, 32, 16, 128, 21_504), vocab_size=262_208,
            max_position_embeddings=131_072, sliding_window=1024, global_every=6,
            query_pre_attn_scalar=168)),
    )
}
# fmt: on
"""Shapes by name. ``llama3-1b`` is the shape of the issue's measured baselines;
``gemma3-27b`` the studies' scale (54 GB in bf16: ``benchmarks.scale``, ``benchmarks.multigpu``)."""


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
    from transformers import AutoConfig

    fields = {
        **shape.config,
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": stop_ids(tok),
        "pad_token_id": tok.pad_token_id,
        "attn_implementation": attn,
    }
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


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
    """Parameters of ``shape`` with ``vocab`` entries, from its config alone
    (:meth:`Shape.dims`), so the roofline of any shape can be computed without building it."""
    return shape.dims(vocab).n_params


def decode_weight_bytes(shape: Shape, vocab: int, elt: int = 2) -> int:
    """:func:`weight_bytes` from the config: an untied input embedding is not read."""
    dims = shape.dims(vocab)
    tied = bool(shape.config.get("tie_word_embeddings"))
    return (dims.n_params - (0 if tied else vocab * dims.d_model)) * elt


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
    dims = shape.dims()
    n_weights = wbytes / elt
    kv_per_pos = 2 * dims.n_kv_heads * dims.d_head * elt  # keys + values, one layer
    attn_flops_per_key = 4 * dims.n_heads * dims.d_head  # QK^T and AV, one layer

    def forward(tokens: int, context: int, cached_rows: int) -> float:
        # key positions attended per query, summed over layers (sliding windows capped)
        keys = dims.kv_positions(context)
        flops = 2 * n_weights * tokens + attn_flops_per_key * tokens * keys
        kv = kv_per_pos * keys * cached_rows  # the KV cache a decode step reads
        return max((wbytes + kv) / hw.bandwidth, flops / hw.peak_flops)

    prefill = forward(shared + batch * (prompt - shared), prompt // 2, 0)
    decode = sum(forward(batch, prompt + s, batch) for s in range(1, new_tokens))
    return {"prefill": prefill, "decode": decode, "total": prefill + decode}
