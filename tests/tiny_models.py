"""Tiny random Hugging Face checkpoints, built offline, for use as test fixtures.

Every checkpoint has a byte-level tokenizer (256 byte symbols, no merges, so any text
round-trips and every character is one token) plus a handful of special tokens and a chat
template, and a 4-layer random model of one of the target architectures. Nothing is
downloaded: the folders are complete for ``from_pretrained(folder)`` with
``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ARCHS: tuple[str, ...] = ("llama", "qwen3", "gemma3", "olmo2")

CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Gemma 3 behaviour: no system turn; a system message is folded into the first user turn
# as "<system>\n\n<user>", and the assistant role is rendered as "model".
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% if messages[0]['content'] %}"
    "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
    "{% else %}{% set first_user_prefix = '' %}{% endif %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}"
    "{% set first_user_prefix = '' %}{% set loop_messages = messages %}"
    "{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' }}"
    "{{ (first_user_prefix if loop.first else '') + message['content'] }}"
    "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# style -> (bos, eos, pad, start-of-turn, end-of-turn, chat template)
STYLES: dict[str, tuple[str, str, str, str, str, str | None]] = {
    "chatml": ("<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>", CHATML_TEMPLATE),
    "gemma": ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>", GEMMA_TEMPLATE),
    "none": ("<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>", None),
}

SIZES: dict[str, Any] = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    max_position_embeddings=512,
)

# Larger than the default 0.02 so that logits are O(1) and greedy continuations differ
# between prompts; Gemma 3 already scales its embeddings by sqrt(hidden), hence less.
INIT_RANGE: dict[str, float] = {"llama": 0.1, "qwen3": 0.1, "gemma3": 0.04, "olmo2": 0.1}


def end_of_turn_token(tokenizer: PreTrainedTokenizerFast) -> str:
    """The special token that closes a chat turn in this tokenizer's template."""
    return "<end_of_turn>" if "<end_of_turn>" in tokenizer.get_vocab() else "<|im_end|>"


def make_tokenizer(folder: Path, style: str) -> PreTrainedTokenizerFast:
    """Build a byte-level BPE tokenizer with special tokens, save it to ``folder``, reload it.

    ``style`` is "chatml" (native system role), "gemma" (system folded into the first user
    turn, as in Gemma 3) or "none" (chatml specials but no chat template). The eos token is
    the plain end-of-text token; the end-of-turn token is a separate special token. The
    tokenizer does not add bos itself: the chat templates write it. It is returned as
    reloaded by ``AutoTokenizer.from_pretrained(folder)``, so ``name_or_path`` is the folder.
    """
    bos, eos, pad, start, end, template = STYLES[style]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=pad
    )
    tok.add_special_tokens({"additional_special_tokens": [start, end]})
    if template is not None:
        tok.chat_template = template
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    loaded = AutoTokenizer.from_pretrained(folder)
    assert isinstance(loaded, PreTrainedTokenizerFast)
    return loaded


def _config(arch: str, tok: PreTrainedTokenizerFast) -> PretrainedConfig:
    """The tiny config of ``arch`` with the tokenizer's vocabulary and special ids."""
    ids: dict[str, Any] = dict(
        initializer_range=INIT_RANGE.get(arch, 0.02),
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if arch == "llama":
        return LlamaConfig(**SIZES, **ids, architectures=["LlamaForCausalLM"])
    if arch == "qwen3":
        return Qwen3Config(**SIZES, **ids, architectures=["Qwen3ForCausalLM"])
    if arch == "olmo2":
        # Real OLMo-2 checkpoints are multi-head (no GQA), and TransformerLens's OLMo-2
        # weight conversion assumes so.
        sizes = {**SIZES, "num_key_value_heads": SIZES["num_attention_heads"]}
        sizes.pop("head_dim")
        return Olmo2Config(**sizes, **ids, architectures=["Olmo2ForCausalLM"])
    if arch == "gemma3":
        return Gemma3TextConfig(
            **SIZES,
            **ids,
            architectures=["Gemma3ForCausalLM"],
            query_pre_attn_scalar=16,
            sliding_window=16,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
        )
    raise ValueError(f"unknown arch {arch!r}: use one of {ARCHS}")


MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "llama": LlamaForCausalLM,
    "qwen3": Qwen3ForCausalLM,
    "gemma3": Gemma3ForCausalLM,
    "olmo2": Olmo2ForCausalLM,
}


def make_tiny_model(folder: Path, arch: str, seed: int = 0) -> Path:
    """Write a tiny random ``arch`` checkpoint (config, safetensors, tokenizer) to ``folder``.

    Gemma 3 gets the "gemma" tokenizer style, the others "chatml". Weights come from
    ``torch.manual_seed(seed)`` with init std ``INIT_RANGE[arch]``. The generation config stops
    at both the end-of-turn token and eos. Returns ``folder``.
    """
    folder = Path(folder)
    tok = make_tokenizer(folder, "gemma" if arch == "gemma3" else "chatml")
    config = _config(arch, tok)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = MODEL_CLASSES[arch](config).eval()
    eot = tok.convert_tokens_to_ids(end_of_turn_token(tok))
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=[eot, tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def make_all(root: Path, seed: int = 0) -> dict[str, Path]:
    """Build one checkpoint per arch in ``root / arch``; the folder name is the arch."""
    return {arch: make_tiny_model(Path(root) / arch, arch, seed) for arch in ARCHS}


def long_window_gemma3(gemma3: Path, folder: Path) -> Path:
    """A copy of the tiny Gemma-3 checkpoint ``gemma3`` in ``folder`` with a sliding window
    (512) longer than any test's cache: its sliding layers never slide."""
    import json
    import shutil

    shutil.copytree(gemma3, folder)
    config = json.loads((folder / "config.json").read_text())
    config["sliding_window"] = 512
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def vec(model, seed: int = 0, scale: float = 6.0):
    """A seeded random vector of the model's width, ``scale`` long per unit variance."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(model.cfg.d_model, generator=g)


def vecs(model, n: int, seed: int = 0, scale: float = 4.0):
    """``n`` seeded random vectors of the model's width (rows), ``scale`` per unit variance."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, model.cfg.d_model, generator=g)
