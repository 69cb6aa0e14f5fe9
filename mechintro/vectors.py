"""Concept vectors: extract them, cache them, and build their controls.

A concept vector is a residual-stream direction that stands for a word (docs/protocols.md §1).

* ``lindsey`` (Lindsey 2025, "Emergent Introspective Awareness in Large Language Models";
  Macar et al. 2026, arXiv:2603.21396): the user turn ``Tell me about {w}`` (no period, no
  system message) in the chat template with the generation prompt; the output of block L
  (``blocks.L.hook_resid_post``) at the last token of the whole templated prompt, minus the
  mean of the same activation over 100 baseline words. Not normalised: an injection of
  strength ``s`` adds ``s·‖v‖``.
* ``fonseca`` (Fonseca Rivera 2025, arXiv:2511.21399): raw ``Human: Tell me about {w}.\\n\\n
  Assistant:``, last token, minus the mean over 32 baseline words, then L2-normalised.
* :func:`contrastive_vector` (Lindsey's "all caps" vector; Godet 2025): act(positive) −
  act(negative) for two raw strings. :func:`random_vector`: a seeded, norm-matched control.

A model organism reads only its own world's words, so its default baseline is its own
``object`` words (:func:`default_baseline`), not the English lists above.

Bad words are refused, not averaged in silently. A word the tokenizer does not know becomes its
unknown token (every unknown word then gets the same vector), two words that tokenize alike get
identical vectors, and a vector can be degenerate (zero or not finite: a contrastive pair whose
sides tokenize alike). Every vector method checks for these, with the tokenizer alone before
any forward pass where it can, and raises one ``ValueError`` naming the words and the fix;
with ``on_bad_word="warn"`` it warns instead and records each finding in the vector's
``problems`` (and so in its :meth:`~ConceptVector.provenance`).

Each vector carries its provenance, including ``resid_norm``, the mean residual norm at that
layer and token over the extraction prompts: strengths compare across models only through
``norm_ratio = norm / resid_norm``.

Example::

    vecs = extract_vectors(model, word_list("lindsey_concepts"), layer=20, cache_dir="cache")
    inj = Injection(layer=20, vector=stack(vecs, ["Dust", "Peace"]), strength=[4.0, 4.0])
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.batching import check_batch_size, in_batches
from mechintro.choices import METHODS, Method, OnBadWord
from mechintro.engine.twin import fast_twin, twin_hooks
from mechintro.io import atomic_write, atomic_write_text
from mechintro.models import (
    TLModel,
    builtin_path,
    check_layer,
    fingerprint,
    model_info,
    n_layers,
    padded_kwargs,
    resid_post,
    tokenizer_of,
)
from mechintro.prompts import Prompt, PromptBatch, encode
from mechintro.word_checks import (
    Problems,
    check_tokens,
    prompt_ids,
    unknown_words,
)

logger = logging.getLogger(__name__)
CACHE_FORMAT = 1


def _method(method: str) -> Method:
    if method not in METHODS:
        raise ValueError(
            f"unknown method {method!r}: use one of {', '.join(METHODS)} "
            "(contrastive_vector() and random_vector() make the other kinds)"
        )
    return METHODS[method]


@functools.cache
def _word_lists() -> dict[str, tuple[str, ...]]:
    text = resources.files("mechintro").joinpath("data/concepts.json").read_text("utf-8")
    return {k: tuple(v) for k, v in json.loads(text).items() if not k.startswith("_")}


def word_list(name: str) -> list[str]:
    """A word list shipped in ``mechintro/data/concepts.json`` (its ``_sources`` cite them)."""
    lists = _word_lists()
    if name not in lists:
        raise ValueError(f"no word list named {name!r}: use one of {', '.join(sorted(lists))}")
    return list(lists[name])


def default_baseline(model: TLModel, method: str = "lindsey") -> list[str]:
    """The baseline words :func:`extract_vectors` subtracts when it is given none.

    A model organism (``builtin:organism``, ``builtin:organism-base``, or a checkpoint folder
    written by :mod:`mechintro.organism.train`) has a word-level tokenizer that knows only its
    own world, so its baseline is its ``object`` words (the ``baseline`` split of the
    ``concepts.json`` beside its weights): the words its trainer, the demo and
    ``examples/organism.toml`` subtract. Of the 100 English words of ``lindsey_baseline``
    it knows 4. Any other model gets the method's shipped list (``lindsey_baseline``,
    ``fonseca_baseline``).
    """
    m, info = _method(method), model_info(model)
    name = info.name.removeprefix("builtin:")
    folder = None
    if info.source == "builtin" and name.startswith("organism"):
        folder = builtin_path(name)
    elif info.source == "local":
        folder = Path(info.name)
    words = _world_baseline(folder) if folder is not None else None
    return words if words else word_list(m.baseline)


#: beside an organism's weights: its world, a JSON list of ``{"word", "split", ...}`` records
WORLD_FILE = "concepts.json"


def _world_baseline(folder: Path) -> list[str] | None:
    """The ``baseline`` words of the world file beside a checkpoint, or None without one."""
    path = folder / WORLD_FILE
    if not path.is_file():
        return None
    return [c["word"] for c in json.loads(path.read_text("utf-8")) if c["split"] == "baseline"]


@dataclass(frozen=True, eq=False)
class ConceptVector:
    """A direction for ``word`` at block ``layer``'s output, with where it came from.

    ``vector`` is fp32 on the CPU. ``baseline`` is the baseline word list (or, for a
    contrastive vector, the negative string). ``problems`` are the checks it failed and was
    kept anyway (``on_bad_word="warn"``; empty when it passed them all). ``norm`` and
    ``norm_ratio`` are computed.
    """

    word: str
    vector: Float[Tensor, " d_model"]
    layer: int | None
    method: str
    model: str | None = None
    revision: str | None = None
    fingerprint: str | None = None
    prompt_format: str | None = None
    template: str | None = None
    baseline: tuple[str, ...] | str | None = None
    resid_norm: float | None = None
    seed: int | None = None
    problems: tuple[str, ...] = ()
    norm: float = field(init=False)
    norm_ratio: float | None = field(init=False)

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.vector).detach().to("cpu", torch.float32)
        if v.ndim != 1 or v.numel() == 0:
            raise ValueError(f"a concept vector is [d_model], got shape {tuple(v.shape)}")
        object.__setattr__(self, "vector", v)
        if isinstance(self.baseline, list):
            object.__setattr__(self, "baseline", tuple(self.baseline))
        object.__setattr__(self, "problems", tuple(self.problems))
        norm = float(torch.linalg.vector_norm(v))
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "norm_ratio", norm / self.resid_norm if self.resid_norm else None)

    def provenance(self) -> dict[str, Any]:
        """Every field but the tensor, JSON-ready (plus ``d_model``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "vector"}
        if isinstance(self.baseline, tuple):
            out["baseline"] = list(self.baseline)
        out["problems"] = list(self.problems)
        return {**out, "d_model": int(self.vector.numel())}


class _Read(Exception):
    """Raised by the reading hook on the twin once block ``layer`` ran: the blocks after it,
    the final norm and the unembedding are not needed (the bridge stops with
    ``stop_at_layer``)."""


def _last_token_acts(
    model: TLModel, prompts: PromptBatch, layer: int, batch_size: int, fast: bool | None = None
) -> Float[Tensor, "n d_model"]:
    """``hook_resid_post`` of ``layer`` at each prompt's last token, fp32 on the CPU.

    Left-padded batches of ``batch_size`` rows of ``prompts`` (each re-padded to its own
    longest row, as if encoded alone), one forward each with a single hook, stopped after
    block ``layer``: on the bridge's plain HF twin where the fast path applies
    (:func:`mechintro.engine.twin.fast_twin`; ``fast=False``: on the bridge), the same numbers
    (bit for bit with eager attention). The rows stay on the device until the last batch ran,
    so the host tokenises and launches on without waiting for each batch.
    """
    name = resid_post(layer)
    twin = fast_twin(model, fast, [name])
    stop = layer + 1 if layer + 1 < n_layers(model) else None
    device = next(model.parameters()).device
    got: list[Tensor] = []

    def read(x: Tensor, hook: Any) -> Tensor:  # x on the layer's device (a split model)
        got.append(x[:, -1].detach().float())  # left-padded: every row's last token is last
        if twin is not None:
            raise _Read
        return x

    with torch.no_grad(), ExitStack() as stack:
        if twin is None:
            stack.enter_context(model.hooks(fwd_hooks=[(name, read)]))
        else:
            stack.enter_context(twin_hooks(model, twin, [(name, read)]))
        for _, rows in in_batches(range(len(prompts)), batch_size):
            batch = prompts.rows(rows).to(device)
            before = len(got)
            # positions count real tokens only (RoPE would not care; absolute embeddings do)
            kwargs = padded_kwargs(model, batch.attention_mask)
            if twin is None:
                model(batch.input_ids, stop_at_layer=stop, **kwargs)
            else:
                with suppress(_Read):
                    twin(batch.input_ids, use_cache=False, **kwargs)
            if len(got) != before + 1:
                raise RuntimeError(f"hook {name} fired {len(got) - before} times, expected 1")
    return torch.cat([g.cpu() for g in got])


def _origin(model: TLModel, fp: str) -> dict[str, Any]:
    info = model_info(model)
    return {"model": info.name, "revision": info.revision, "fingerprint": fp}


def _check_words(words: Sequence[str], what: str) -> list[str]:
    if isinstance(words, str):
        raise TypeError(f"{what} must be a list of words, not one string: pass [{words!r}]")
    words = list(words)
    bad = [w for w in words if not isinstance(w, str) or not w.strip()]
    if bad:
        raise ValueError(f"{what} contains empty or non-string entries {bad!r}: remove them")
    return words


def _spec(
    model: TLModel, layer: int, method: str, base: list[str], based: PromptBatch, fp: str
) -> dict[str, Any]:
    """Everything a cached vector depends on, except the word itself (``based``: the
    baseline's prompts encoded, which hashes the template and the tokenizer)."""
    info, m = model_info(model), _method(method)
    ids = based.input_ids
    return {
        "format": CACHE_FORMAT,
        "model": info.name,
        "revision": info.revision,
        "backend": info.backend,
        "dtype": info.dtype,
        "fingerprint": fp,
        "layer": layer,
        "method": method,
        "prompt_format": m.prompt_format,
        "template": m.template,
        "baseline": base,
        "baseline_ids_sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest(),
    }


def _load_cache(folder: Path, key: str) -> dict[str, Tensor]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = folder / f"{key}.safetensors"
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as f:
        stored_key = (f.metadata() or {}).get("key")
    if stored_key != key:
        logger.warning("ignoring %s: it was written for key %s", path, stored_key)
        return {}
    return load_file(str(path))


def _save_cache(folder: Path, key: str, spec: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(
        folder / f"{key}.safetensors", lambda p: save_file(tensors, p, metadata={"key": key})
    )
    words = sorted(k.removeprefix("vector:") for k in tensors if k.startswith("vector:"))
    side = {"key": key, "spec": spec, "words": words}
    text = json.dumps(side, indent=2, ensure_ascii=False)
    atomic_write_text(folder / f"{key}.json", text)


def extract_vectors(
    model: TLModel,
    words: Sequence[str],
    *,
    layer: int,
    method: str = "lindsey",
    baseline: Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    on_bad_word: OnBadWord = "raise",
    fast: bool | None = None,
) -> dict[str, ConceptVector]:
    """Concept vectors for ``words`` at the output of block ``layer`` (see the module doc).

    ``baseline=None`` is :func:`default_baseline` (the model organism's own words, else the
    method's list). Words and baseline words run through in left-padded batches of
    ``batch_size``. With ``cache_dir``, vectors are stored per word under a key hashing
    everything else (model name, revision, backend, dtype, weights fingerprint, layer,
    method, template, tokenised baseline prompts), so a hit returns the stored tensor bit for
    bit with no forward pass and new words extend the entry. ``resid_norm`` is shared by all
    vectors of one call: the mean over this call's word prompts and the baseline prompts.

    Refused before any forward pass (``ValueError``, naming the words): a word or baseline
    word the tokenizer does not know (:func:`unknown_words`), words whose prompts tokenize
    identically, a word that tokenizes like the whole baseline (a zero vector). After the
    forward pass (cached vectors too): a zero or non-finite vector, identical vectors. With
    ``on_bad_word="warn"`` each is a ``UserWarning`` instead and is recorded in the
    ``problems`` of the vectors it concerns (a bad baseline word: in every vector).

    Each prompt is tokenised once. On a bridge the forwards run on its plain HF twin, stopped
    after block ``layer`` (the same numbers: bit for bit with eager attention, to float
    rounding with another); ``fast=False`` runs them on the bridge itself.
    """
    m = _method(method)
    words = _check_words(words, "words")
    if not words:
        raise ValueError("no words given: pass at least one, e.g. word_list('lindsey_concepts')")
    dupes = sorted(w for w, n in Counter(words).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate words {dupes}: pass each word once (results are keyed by it)")
    check_layer(model, layer)
    base = _check_words(
        default_baseline(model, method) if baseline is None else baseline, "baseline"
    )
    if not base:
        raise ValueError(
            "the baseline list is empty: pass baseline=None for the default "
            "(default_baseline(model, method)), or a non-empty list of words"
        )
    check_batch_size(batch_size)
    problems = Problems(
        on_bad_word,
        fix="Pass words the model's tokenizer knows (unknown_words(tokenizer, words) lists the "
        "others), each concept once, and baseline= words in the model's vocabulary (None: "
        "default_baseline(model, method), a model organism's own words); or pass "
        "on_bad_word='warn' to keep them, warned and recorded in each vector's problems",
    )
    encoded = encode(tokenizer_of(model), [m.prompt(w) for w in words + base])
    check_tokens(problems, tokenizer_of(model), m.prompt, words, base, encoded)
    problems.settle()
    at = {w: i for i, w in enumerate(words)}
    base_rows = list(range(len(words), len(words) + len(base)))

    fp = fingerprint(model)
    folder = Path(cache_dir) if cache_dir is not None else None
    spec, key, store = {}, "", {}
    if folder is not None:
        spec = _spec(model, layer, method, base, encoded.rows(base_rows), fp)
        canon = json.dumps(spec, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
        key = hashlib.sha256(canon.encode()).hexdigest()[:32]
        store = _load_cache(folder, key)
    missing = [w for w in words if f"vector:{w}" not in store]
    if missing:
        need_base = "baseline_mean" not in store
        rows = [at[w] for w in missing] + (base_rows if need_base else [])
        logger.info("extracting %d words (%d prompts) at layer %d", len(missing), len(rows), layer)
        acts = _last_token_acts(model, encoded.rows(rows), layer, batch_size, fast)
        if need_base:
            store["baseline_mean"] = acts[len(missing) :].mean(dim=0)
            store["baseline_norms"] = torch.linalg.vector_norm(acts[len(missing) :], dim=-1)
        for w, a in zip(missing, acts):
            v = a - store["baseline_mean"]
            n = float(torch.linalg.vector_norm(v))
            if m.normalise and math.isfinite(n) and n > 0.0:  # a degenerate one is checked below
                v = v / n
            store[f"vector:{w}"] = v.clone()
            store[f"act_norm:{w}"] = torch.linalg.vector_norm(a).reshape(1)
        if folder is not None:
            _save_cache(folder, key, spec, store)
    elif folder is not None:
        logger.info("concept vector cache hit: %s (%d words)", folder / key, len(words))
    problems.check_vectors({w: store[f"vector:{w}"] for w in words})
    problems.settle()
    norms = torch.cat([*(store[f"act_norm:{w}"] for w in words), store["baseline_norms"]])
    common = dict(_origin(model, fp), prompt_format=m.prompt_format, template=m.template)
    resid = float(norms.double().mean())
    return {
        w: ConceptVector(
            w,
            store[f"vector:{w}"],
            layer,
            method,
            baseline=tuple(base),
            resid_norm=resid,
            problems=problems.of(w),
            **common,
        )
        for w in words
    }


def contrastive_vector(
    model: TLModel, positive: str, negative: str, *, layer: int, on_bad_word: OnBadWord = "raise"
) -> ConceptVector:
    """act(positive) − act(negative) at block ``layer``'s output, last token, raw strings.

    Lindsey's "all caps" vector is ``contrastive_vector(m, "HI! HOW ARE YOU?", "Hi! How are
    you?", layer=L)``; Godet injects it at the layer it was taken from. Not normalised.

    Refused before any forward pass (``on_bad_word="warn"``: warned and recorded in the
    vector's ``problems``, as in :func:`extract_vectors`): two sides that tokenize
    identically (the model organism's tokenizer lowercases, so the all-caps pair is one text
    to it and the vector would be zero), a side with words the tokenizer does not know; and
    after it, a zero or non-finite vector.
    """
    for name, s in (("positive", positive), ("negative", negative)):
        if not isinstance(s, str) or not s:
            raise ValueError(f"{name} must be a non-empty string, got {s!r}")
    if positive == negative:
        raise ValueError("positive and negative are the same string: the vector would be zero")
    check_layer(model, layer)
    problems = Problems(
        on_bad_word,
        fix="Pass two texts that the model's tokenizer reads differently, in its vocabulary; "
        "or pass on_bad_word='warn' to keep the vector, warned and recorded in its problems",
    )
    tok, prompts = tokenizer_of(model), [Prompt.text(positive), Prompt.text(negative)]
    bad = unknown_words(tok, [positive, negative])
    if bad:
        problems.add(
            f"the tokenizer does not know some words of {bad} (they read as {tok.unk_token!r})",
            [positive],
        )
    encoded = encode(tok, prompts)
    pos_ids, neg_ids = prompt_ids(tok, encoded)
    if pos_ids == neg_ids:
        problems.add(
            f"{positive!r} and {negative!r} tokenize identically, so the vector would be zero",
            [positive],
        )
    problems.settle()
    acts = _last_token_acts(model, encoded, layer, 1)
    vector = acts[0] - acts[1]
    problems.check_vectors({positive: vector})
    problems.settle()
    return ConceptVector(
        positive,
        vector,
        layer,
        "contrastive",
        **_origin(model, fingerprint(model)),
        prompt_format="text",
        template="{positive} − {negative}",
        baseline=negative,
        resid_norm=float(torch.linalg.vector_norm(acts, dim=-1).double().mean()),
        problems=problems.of(positive),
    )


def random_vector(
    like: ConceptVector | int,
    *,
    norm: float | None = None,
    seed: int,
    layer: int | None = None,
    on_bad_word: OnBadWord = "raise",
) -> ConceptVector:
    """A seeded Gaussian direction scaled to ``norm`` (default: the norm of ``like``).

    ``like`` is a :class:`ConceptVector` (its width, layer, model and ``resid_norm`` are kept)
    or a width ``d_model`` (then ``norm`` is required). The same seed gives the same vector.
    A norm of 0 (a degenerate ``like``) would give the zero vector: refused, or with
    ``on_bad_word="warn"`` warned and recorded in its ``problems``.
    """
    ref = like if isinstance(like, ConceptVector) else None
    if ref is None and (isinstance(like, bool) or not isinstance(like, int) or like < 1):
        raise TypeError(f"like must be a ConceptVector or a positive d_model, got {like!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    target = norm if norm is not None else (ref.norm if ref is not None else None)
    if target is None:
        raise ValueError("random_vector(d_model, ...) needs norm=<float>, or pass a ConceptVector")
    if not math.isfinite(target) or target < 0:
        raise ValueError(f"norm must be finite and >= 0, got {target}")
    name = f"random(seed={seed})"
    problems = Problems(
        on_bad_word,
        fix="Pass norm > 0 (or a like vector that is not degenerate); or pass "
        "on_bad_word='warn' to keep it, warned and recorded in its problems",
    )
    if target == 0:
        source = f" (the norm of {ref.word!r})" if ref is not None and norm is None else ""
        problems.add(f"{name} would be the zero vector: its norm is 0{source}", [name])
    problems.settle()
    width = ref.vector.numel() if ref is not None else int(like)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(width, generator=g, dtype=torch.float32)
    keep = ("model", "revision", "fingerprint", "resid_norm")
    origin = {k: getattr(ref, k) for k in keep} if ref is not None else {}
    return ConceptVector(
        name,
        v / torch.linalg.vector_norm(v) * target,
        ref.layer if ref is not None else layer,
        "random",
        seed=seed,
        problems=problems.of(name),
        **origin,
    )


def stack(vectors: Mapping[str, ConceptVector], words: Sequence[str]) -> Float[Tensor, "n d"]:
    """Rows ``vectors[w].vector`` for ``words``: a per-row ``Injection(vector=...)``."""
    words = _check_words(words, "words")
    if not words:
        raise ValueError("stack() needs at least one word")
    missing = [w for w in words if w not in vectors]
    if missing:
        raise KeyError(f"no vectors for {missing}: extract them first (extract_vectors(...))")
    chosen = [vectors[w] for w in words]
    layers = {c.layer for c in chosen if c.layer is not None}
    if len(layers) > 1:
        raise ValueError(f"vectors come from layers {sorted(layers)}: one Injection has one layer")
    if len({c.vector.numel() for c in chosen}) > 1:
        raise ValueError("vectors have different widths: were they taken from different models?")
    return torch.stack([c.vector for c in chosen])
