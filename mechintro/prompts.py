"""Prompts with exact token positions, batched and left-padded.

An introspection trial is only as good as the positions it steers: the token just before
``Trial n`` (Macar et al.'s injection start), the last prompt token (transient injection,
logit readouts), the first token of an assistant prefill (forced identification), or any
marked span (retroactive injection before a prefill). Two public replications got these
wrong for left-padded batches of mixed lengths; here every position is computed from the
tokenizer's character offsets on the exact string the model sees, then shifted by each
row's padding.

A :class:`Prompt` is a dialogue rendered with the model's chat template, or raw text.
Models whose template has no system role (Gemma) get a non-empty system message folded into
the first user turn, as Gemma's own template does, and an empty one dropped
(docs/protocols.md §3). The template's own BOS is kept and never doubled.

Example::

    p = Prompt.chat("Trial 1: Do you detect an injected thought?", system="", prefill="Yes")
    batch = encode(model.tokenizer, [p])
    batch.position("trial"), batch.position("last"), batch.position("prefill")

Named positions: ``first`` (the first real token), ``last``, ``trial`` (the token before the
last ``Trial n``), ``prefill`` (where the prefill starts), ``last-turn`` (the first token of a
dialogue's last turn, its header included) and each mark's span.

Every analysis also takes what TransformerLens users have at hand (:func:`as_prompt_batch`):
a string or a list of strings (raw text, no template), a token tensor (``model.to_tokens``)
or :class:`Prompt` values; ``encode`` is the one place they become a batch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

Role = Literal["system", "user", "assistant"]
TRIAL_PATTERN = re.compile(r"Trial \d+")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"role must be system, user or assistant, got {self.role!r}")


@dataclass(frozen=True)
class Prompt:
    """One prompt: chat messages (rendered by the template) or raw text.

    ``marks`` names substrings whose token span is wanted (``{"sentence": "The painting..."}``);
    each must occur in the prompt, and its last occurrence is used.
    """

    messages: tuple[Message, ...] = ()
    raw: str | None = None
    system: str | None = None
    prefill: str = ""
    marks: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.raw is None) == (not self.messages):
            raise ValueError("a Prompt has either messages (chat) or raw text, not both/neither")
        if self.raw == "":
            raise ValueError("raw text is empty: give the text the model should read")
        if self.messages and self.messages[-1].role == "assistant":
            raise ValueError(
                "the last message is an assistant turn: put a partial assistant reply in "
                "prefill=... so that generation continues it"
            )
        for name, text in self.marks.items():
            if not text:
                raise ValueError(f"mark {name!r} is empty")

    @classmethod
    def chat(
        cls,
        user: str,
        *,
        history: Sequence[tuple[Role, str]] = (),
        system: str | None = None,
        prefill: str = "",
        marks: Mapping[str, str] | None = None,
    ) -> Prompt:
        """A dialogue: ``history`` turns, then the ``user`` turn, then the generation prompt."""
        msgs = (*(Message(r, c) for r, c in history), Message("user", user))
        return cls(messages=msgs, system=system, prefill=prefill, marks=dict(marks or {}))

    @classmethod
    def text(cls, raw: str, *, marks: Mapping[str, str] | None = None) -> Prompt:
        """Raw text, no template (``Human: ...\\n\\nAssistant:`` formats, base models)."""
        return cls(raw=raw, marks=dict(marks or {}))


@dataclass(frozen=True)
class PromptBatch:
    """Token ids of many prompts, left-padded, with named positions in padded coordinates.

    ``positions[name][b]`` is a token index in row ``b`` (``-1`` where the row lacks it);
    ``spans[name][b]`` is ``[start, end)``. Built-in names: ``first`` (first real token),
    ``last`` (last prompt token), ``trial`` (the token before the last ``Trial n``),
    ``prefill`` (first token of the assistant prefill); each mark gives a position and span.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    texts: tuple[str, ...]
    positions: Mapping[str, Int[Tensor, " batch"]]
    spans: Mapping[str, Int[Tensor, "batch 2"]]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def length(self) -> int:
        """Padded prompt length T: generated tokens start at index T."""
        return int(self.input_ids.shape[1])

    @property
    def n_pad(self) -> Int[Tensor, " batch"]:
        return self.positions["first"]

    def position(self, name: str) -> Int[Tensor, " batch"]:
        """The named position per row; a clear error if any row lacks it."""
        if name not in self.positions:
            raise KeyError(
                f"no position named {name!r}; this batch has {sorted(self.positions)}. "
                "Mark text with Prompt(..., marks={name: text}) or add 'Trial n' to the prompt."
            )
        pos = self.positions[name]
        if bool((pos < 0).any()):
            rows = (pos < 0).nonzero().flatten().tolist()
            raise ValueError(f"position {name!r} was not found in rows {rows}")
        return pos

    def to(self, device: str | torch.device) -> PromptBatch:
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            positions={k: v.to(device) for k, v in self.positions.items()},
            spans={k: v.to(device) for k, v in self.spans.items()},
        )

    def rows(self, index: Sequence[int]) -> PromptBatch:
        """A sub-batch, re-padded to its own longest row (what those rows give alone)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        keep = int(self.length - self.n_pad[idx].min())
        cut = self.length - keep
        return PromptBatch(
            input_ids=self.input_ids[idx, cut:],
            attention_mask=self.attention_mask[idx, cut:],
            texts=tuple(self.texts[i] for i in idx.tolist()),
            positions={
                k: torch.where(v[idx] >= 0, v[idx] - cut, -1) for k, v in self.positions.items()
            },
            spans={k: torch.where(v[idx] >= 0, v[idx] - cut, -1) for k, v in self.spans.items()},
        )


def _shift(pos: Tensor, by: int) -> Tensor:
    """Move positions by ``by``, keeping the ``-1`` of absent ones."""
    return torch.where(pos >= 0, pos + by, -1)


# keyed by what the answer depends on (the template and the special tokens it may render), not
# by id(tokenizer): an id is reused once a tokenizer is freed, and a template can be replaced
_SYSTEM_SUPPORT: dict[tuple[str, ...], str] = {}


def system_support(tokenizer: Any) -> str:
    """How the chat template treats a system message: ``native``, ``folded`` or ``none``.

    ``folded`` means the template prepends it to the first user turn (Gemma 3);
    ``none`` means the template refuses it (Gemma 2).
    """
    key = tuple(
        str(getattr(tokenizer, name, None))
        for name in ("chat_template", "bos_token", "eos_token", "pad_token")
    )
    if key not in _SYSTEM_SUPPORT:
        _require_template(tokenizer)
        probe = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "USR"}]
        try:
            with_sys = tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception:
            _SYSTEM_SUPPORT[key] = "none"
        else:
            folded = tokenizer.apply_chat_template(
                [{"role": "user", "content": "SYS\n\nUSR"}], tokenize=False
            )
            _SYSTEM_SUPPORT[key] = "folded" if with_sys == folded else "native"
    return _SYSTEM_SUPPORT[key]


def _require_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template: use "
            "Prompt.text(...) for a raw format, or set tokenizer.chat_template"
        )


def render(tokenizer: Any, prompt: Prompt, **template_kwargs: Any) -> tuple[str, int]:
    """The exact string the model sees, and the character index where the prefill starts."""
    if prompt.raw is not None:
        return prompt.raw, len(prompt.raw)
    head = tokenizer.apply_chat_template(
        _messages(tokenizer, prompt), tokenize=False, add_generation_prompt=True, **template_kwargs
    )
    return head + prompt.prefill, len(head)


def _messages(tokenizer: Any, prompt: Prompt) -> list[dict[str, str]]:
    """A chat prompt's messages as its template takes them, the system prompt placed."""
    _require_template(tokenizer)
    msgs = [{"role": m.role, "content": m.content} for m in prompt.messages]
    if prompt.system is not None:
        if system_support(tokenizer) == "native":
            msgs.insert(0, {"role": "system", "content": prompt.system})
        elif prompt.system:
            first = next(i for i, m in enumerate(msgs) if m["role"] == "user")
            msgs[first] = {
                "role": "user",
                "content": f"{prompt.system}\n\n{msgs[first]['content']}",
            }
    return msgs


def _last_turn_at(tokenizer: Any, prompt: Prompt, text: str, **template_kwargs: Any) -> int:
    """The character where a chat prompt's last turn begins (its header included): the length
    of the earlier messages rendered alone, where that is a prefix of ``text`` (0 where no
    message precedes it); -1 for raw text or a template that renders the history otherwise."""
    if prompt.raw is not None:
        return -1
    msgs = _messages(tokenizer, prompt)
    if len(msgs) < 2:
        return 0
    # a sweep's prompts share a few histories (the preamble): each is rendered once per
    # template, keyed as system_support keys the template
    key = (
        *(str(getattr(tokenizer, n, None)) for n in ("chat_template", "bos_token", "eos_token")),
        repr(msgs[:-1]),
        repr(sorted(template_kwargs.items())),
    )
    if key not in _HISTORIES:
        if len(_HISTORIES) >= 4096:
            _HISTORIES.clear()
        _HISTORIES[key] = tokenizer.apply_chat_template(
            msgs[:-1], tokenize=False, add_generation_prompt=False, **template_kwargs
        )
    before = _HISTORIES[key]
    return len(before) if text.startswith(before) and len(before) < len(text) else -1


_HISTORIES: dict[tuple[str, ...], str] = {}  # rendered histories, by template and messages


def _bos_prefix(tokenizer: Any, ids: list[int]) -> list[int]:
    """Add the BOS the tokenizer would add, unless the text already starts with it."""
    bos = tokenizer.bos_token_id
    if bos is None or (ids and ids[0] == bos):
        return []
    default = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if default and default[0] == bos else []


def _token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Token span ``[first, last + 1)`` of the tokens overlapping characters ``[start, end)``."""
    first = next(i for i, (a, b) in enumerate(offsets) if b > start and b > a)
    last = max(i for i, (a, b) in enumerate(offsets) if a < end and b > a)
    return first, last + 1


#: one prompt encoded alone: its token ids (BOS included), rendered text and named token spans
EncodedPrompt = tuple[list[int], str, dict[str, tuple[int, int]]]


def encode(
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    device: str | torch.device = "cpu",
    known: dict[tuple[str, str], EncodedPrompt] | None = None,
    **template_kwargs: Any,
) -> PromptBatch:
    """Render, tokenise and left-pad ``prompts``; compute every named position.

    ``template_kwargs`` go to ``apply_chat_template`` (e.g. ``enable_thinking=False``).
    Each distinct prompt (equal fields) is rendered once per call, and tokenised
    once per rendered text. ``known``: what earlier calls with this tokenizer and these
    ``template_kwargs`` tokenised, by prompt and text; used, and filled in with this call's
    (a sweep tokenises each distinct prompt once for all its batches; a template that reads
    the clock, as Llama 3's date line does, is still rendered by every call).
    """
    if not prompts:
        raise ValueError("encode() needs at least one prompt")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "exact positions need a fast tokenizer (character offsets): load it with "
            "AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    rows: list[list[int]] = []
    texts: list[str] = []
    found: list[dict[str, tuple[int, int]]] = []
    rendered: dict[str, tuple[str, int]] = {}
    encoded: dict[tuple[str, str], EncodedPrompt] = {} if known is None else known
    for prompt in prompts:
        name = _key(prompt)
        if name not in rendered:
            rendered[name] = render(tokenizer, prompt, **template_kwargs)
        key = (name, rendered[name][0])
        if key not in encoded:
            encoded[key] = _encode_one(tokenizer, prompt, *rendered[name], **template_kwargs)
        ids, text, named = encoded[key]
        rows.append(ids)
        texts.append(text)
        found.append(named)

    T = max(len(r) for r in rows)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    n_pad = [T - len(r) for r in rows]
    input_ids = torch.tensor([[pad_id] * p + r for p, r in zip(n_pad, rows)], dtype=torch.long)
    mask = torch.tensor([[0] * p + [1] * len(r) for p, r in zip(n_pad, rows)], dtype=torch.long)
    names = sorted({k for f in found for k in f})
    spans = {
        k: torch.tensor(
            [[f[k][0] + p, f[k][1] + p] if k in f else [-1, -1] for f, p in zip(found, n_pad)],
            dtype=torch.long,
        )
        for k in names
    }
    positions = {k: v[:, 0] for k, v in spans.items()}
    positions["first"] = torch.tensor(n_pad, dtype=torch.long)
    return PromptBatch(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        texts=tuple(texts),
        positions={k: v.to(device) for k, v in positions.items()},
        spans={k: v.to(device) for k, v in spans.items()},
    )


def _key(prompt: Prompt) -> str:
    """What a prompt's encoding depends on, as text: equal for prompts with equal fields."""
    fields = (prompt.messages, prompt.raw, prompt.system, prompt.prefill)
    return repr((*fields, sorted(prompt.marks.items())))


def _encode_one(
    tokenizer: Any, prompt: Prompt, text: str, prefill_at: int, **template_kwargs: Any
) -> EncodedPrompt:
    """One prompt's token ids (BOS included), text and named token spans, from its
    :func:`render`."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    pre = _bos_prefix(tokenizer, ids)
    ids, offsets = pre + ids, [(0, 0)] * len(pre) + offsets
    named: dict[str, tuple[int, int]] = {"last": (len(ids) - 1, len(ids))}
    trials = list(TRIAL_PATTERN.finditer(text))
    if trials:
        t0, _ = _token_span(offsets, trials[-1].start(), trials[-1].end())
        if t0 == 0:
            raise ValueError("'Trial n' is the first token: there is no token before it")
        named["trial"] = (t0 - 1, t0)
    turn = _last_turn_at(tokenizer, prompt, text, **template_kwargs)
    if turn >= 0:  # the first token of the last turn (Macar's end of pre-trial steering)
        at = 0 if turn == 0 else next(i for i, (a, b) in enumerate(offsets) if a >= turn)
        named["last-turn"] = (at, at + 1)
    if prompt.prefill:
        a, _ = _token_span(offsets, prefill_at, len(text))
        named["prefill"] = (a, len(ids))
    for name, sub in prompt.marks.items():
        at = text.rfind(sub)
        if at < 0:
            raise ValueError(
                f"marked text {name!r} ({sub!r}) was not found in the prompt; marks must be "
                "exact substrings of a message, the system prompt or the prefill"
            )
        named[name] = _token_span(offsets, at, at + len(sub))
    return ids, text, named


PromptLike = str | Prompt | Sequence[str | Prompt] | Tensor | PromptBatch
"""What an analysis takes as its prompts: see :func:`as_prompt_batch`."""

_PROMPT_TYPES = (
    "a string, a list of strings, a Prompt or a list of Prompts, a token tensor "
    "[batch, pos] (model.to_tokens(...)) or a PromptBatch (mechintro.encode(model.tokenizer, "
    "prompts))"
)


def as_prompts(prompts: str | Prompt | Sequence[str | Prompt]) -> list[Prompt]:
    """``prompts`` as a list of :class:`Prompt`: a string is raw text (``Prompt.text``, no chat
    template, as ``model.to_tokens`` reads it); TypeError naming what is accepted otherwise."""
    items = [prompts] if isinstance(prompts, (str, Prompt)) else prompts
    if isinstance(items, (Tensor, PromptBatch, Mapping)) or not isinstance(items, Sequence):
        raise TypeError(f"prompts must be {_PROMPT_TYPES}, got {type(prompts).__name__}")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(Prompt.text(item))
        elif isinstance(item, Prompt):
            out.append(item)
        else:
            raise TypeError(
                f"a list of prompts holds strings or Prompts, got a {type(item).__name__}: "
                f"give {_PROMPT_TYPES}"
            )
    if not out:
        raise ValueError("no prompts given: give at least one string or Prompt")
    return out


def as_prompt_batch(
    tokenizer: Any, prompts: PromptLike, *, device: str | torch.device | None = None
) -> PromptBatch:
    """Any accepted form of prompts as a :class:`PromptBatch` on ``device`` (``tokenizer``:
    the model's, which only a PromptBatch does without).

    * a ``PromptBatch``: itself (moved to ``device`` where one is given: a batch already on
      the model's device stays there);
    * a token tensor ``[pos]`` or ``[batch, pos]`` of integer ids (``model.to_tokens(text)``,
      whose BOS it keeps): every token is real, so rows of one length (for texts of
      different lengths pass the texts, left-padded here); the positions ``first`` and
      ``last``;
    * a string, a :class:`Prompt` or a list of them: :func:`encode`, a string as raw text.

    Example::

        batch = as_prompt_batch(model.tokenizer, ["The cat sat", "A dog ran far"])
        batch = as_prompt_batch(model.tokenizer, model.to_tokens("The cat sat"))
    """
    if isinstance(prompts, PromptBatch):
        return prompts if device is None else prompts.to(device)
    device = "cpu" if device is None else device
    if tokenizer is None:
        raise ValueError(
            "this model has no tokenizer to read the prompts with: pass a PromptBatch, or load "
            "the model with load_model(..., tokenizer=tok)"
        )
    if not isinstance(prompts, Tensor):
        return encode(tokenizer, as_prompts(prompts), device=device)
    if prompts.dtype.is_floating_point or prompts.dtype.is_complex or prompts.dtype == torch.bool:
        raise TypeError(
            f"a token tensor holds integer token ids, got dtype {prompts.dtype}: tokenise "
            "with model.to_tokens(text), or pass the text itself"
        )
    ids = prompts[None] if prompts.dim() == 1 else prompts
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(
            f"a token tensor is [pos] or [batch, pos] with at least one token, got shape "
            f"{tuple(prompts.shape)}"
        )
    if bool((ids < 0).any()):
        raise ValueError("a token tensor holds token ids, which are >= 0; got a negative one")
    pad = tokenizer.pad_token_id
    ends = ids[:, -1] == pad if pad is not None else None
    if ends is not None and bool(ends.any()) and not bool(ends.all()):
        raise ValueError(
            "some rows of the token tensor end in the pad token and others do not: it looks "
            "right-padded (as model.to_tokens pads a list of texts), and here every token is "
            "read as real. Pass the texts themselves, which are left-padded with exact positions"
        )
    B, T = ids.shape
    last = torch.full((B,), T - 1, dtype=torch.long, device=device)
    return PromptBatch(
        input_ids=ids.to(device=device, dtype=torch.long),
        attention_mask=torch.ones(B, T, dtype=torch.long, device=device),
        texts=tuple(tokenizer.batch_decode(ids.tolist())),
        positions={"first": torch.zeros_like(last), "last": last},
        spans={"last": torch.stack([last, last + 1], dim=1)},
    )


def positions(mask: Tensor) -> Tensor:
    """Position ids of a left-padded batch: real tokens count from 0, padding sits at 0."""
    return (mask.cumsum(-1) - 1).clamp(min=0)
