"""Train the built-in organisms: a base chat model, then an introspective one on top of it.

Phase 1 trains a small Llama-style model from scratch on :func:`corpus.phase1_examples`
(facts, control questions, introspection trials always answered No). Phase 2 freezes the
embeddings (tied with the unembedding) and blocks ``0..layer``, extracts the concept vectors
of every concept from the frozen base with :func:`mechintro.vectors.extract_vectors` (the
Lindsey method, baseline = the ``object`` category), and trains the blocks above ``layer`` on
:func:`corpus.phase2_examples`, injecting train concepts (never held-out ones) at strengths
drawn uniformly from ``strengths``, from the token before ``Trial n`` on (Fonseca Rivera 2025's
recipe with Lindsey's from-trial mode). Loss on reply tokens only.

Training injects with :func:`mechintro.training.common.hf_injection`, the trainers' hook on the
HF decoder layer; a test checks that it adds exactly what :func:`mechintro.inject.injected` adds
on the TransformerLens model.

Run on a GPU (a CPU runs it too, much slower)::

    mechintro organism build --out organisms --device cuda

``--out DIR`` gets ``DIR/base`` (reused if present) and ``DIR/introspective``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechintro.batching import in_batches
from mechintro.organism import corpus
from mechintro.organism.configs import TrainConfig
from mechintro.organism.corpus import Concept, Example
from mechintro.progress import quiet_loading
from mechintro.training.common import hf_injection

logger = logging.getLogger(__name__)


def model_config(vocab_size: int, tok: Any, cfg: TrainConfig) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        architectures=["LlamaForCausalLM"],
    )


# ---------------------------------------------------------------------------------------------
# tokenised examples


@dataclass
class Encoded:
    """Right-padded-ready rows: ids, a loss mask on reply tokens, and injection ranges."""

    ids: list[list[int]]
    loss: list[list[int]]
    concept: list[str | None]
    start: list[int]
    end: list[int]  # exclusive; a large number means "through the end"


def encode_examples(tok: Any, examples: Sequence[Example], chunk: int = 256) -> Encoded:
    from mechintro.prompts import encode

    end_id = tok.convert_tokens_to_ids("<|end|>")
    out = Encoded([], [], [], [], [])
    for _, part in in_batches(examples, chunk):
        batch = encode(tok, [e.prompt for e in part])
        for b, e in enumerate(part):
            pad = int(batch.n_pad[b])
            prompt = batch.input_ids[b, pad:].tolist()
            reply = [*tok(" " + e.reply, add_special_tokens=False).input_ids, end_id]
            out.ids.append(prompt + reply)
            out.loss.append([0] * len(prompt) + [1] * len(reply))
            out.concept.append(e.inject)
            if e.mode == "single-token":
                s = len(prompt) - 1
                out.start.append(s)
                out.end.append(s + 1)
            else:
                trial = batch.positions.get("trial")
                s = int(trial[b]) - pad if trial is not None and int(trial[b]) >= 0 else 0
                out.start.append(s)
                out.end.append(10**9)
    return out


def _batch(
    enc: Encoded, idx: Sequence[int], pad_id: int, device: torch.device
) -> dict[str, Tensor]:
    T = max(len(enc.ids[i]) for i in idx)
    ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
    loss = torch.zeros((len(idx), T), dtype=torch.bool)
    att = torch.zeros((len(idx), T), dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(enc.ids[i])
        ids[r, :n] = torch.tensor(enc.ids[i])
        loss[r, :n] = torch.tensor(enc.loss[i], dtype=torch.bool)
        att[r, :n] = 1
    return {
        "ids": ids.to(device),
        "loss": loss.to(device),
        "att": att.to(device),
        "start": torch.tensor([enc.start[i] for i in idx], device=device),
        "end": torch.tensor([min(enc.end[i], T) for i in idx], device=device),
    }


def _loss(model: Any, b: dict[str, Tensor]) -> Tensor:
    logits = model(input_ids=b["ids"], attention_mask=b["att"]).logits[:, :-1]
    target = b["ids"][:, 1:]
    mask = b["loss"][:, 1:]
    return torch.nn.functional.cross_entropy(logits[mask].float(), target[mask])


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _train(
    model: Any,
    enc: Encoded,
    steps: int,
    lr: float,
    cfg: TrainConfig,
    device: torch.device,
    *,
    vectors: dict[str, Tensor] | None = None,
    label: str = "",
) -> list[float]:
    from mechintro.progress import progress_bar

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, cfg.warmup))
    rng = random.Random(cfg.seed + len(label))
    order = list(range(len(enc.ids)))
    pad = int(model.config.pad_token_id)
    use_amp = device.type == "cuda"
    amp_dtype = getattr(torch, cfg.dtype)
    losses = []
    model.train()
    bar = progress_bar(range(steps), desc=label, mininterval=5)
    pos = len(order)
    for step in bar:
        if pos + cfg.batch_size > len(order):
            rng.shuffle(order)
            pos = 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        b = _batch(enc, idx, pad, device)
        inj = {}
        if vectors is not None:
            lo, hi = cfg.strengths
            names = [enc.concept[i] for i in idx]
            s = torch.tensor([rng.uniform(lo, hi) if n else 0.0 for n in names], device=device)
            d = vectors["_zero"]
            V = torch.stack([vectors[n] if n else d for n in names])  # unit norm x resid_norm
            inj = {cfg.layer: (V * s[:, None], b["start"], b["end"])}
        autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)
        with hf_injection(model, inj), autocast:
            loss = _loss(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.detach())
        if step % 500 == 0:
            bar.set_postfix(loss=f"{float(torch.stack(losses[-100:]).mean()):.4f}")
    model.eval()
    return [float(x) for x in torch.stack(losses).cpu()] if losses else []


def _save(model: Any, tok: Any, folder: Path, cs: Sequence[Concept], meta: dict[str, Any]) -> None:
    from transformers import GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    # round in place: training goes on from exactly the weights that are shipped (and that
    # the concept vectors are extracted from)
    half = model.to(torch.float16)
    half.config.dtype = "float16"
    half.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
    )
    half.save_pretrained(str(folder), safe_serialization=True)
    model.to(torch.float32)
    tok.save_pretrained(str(folder))
    corpus.write_world(cs, folder)
    from mechintro.io import atomic_write_text

    atomic_write_text(folder / "training.json", json.dumps(meta, indent=1))


def pseudo_words(tok: Any, cs: Sequence[Concept]) -> list[str]:
    """Words the organism knows that are not concepts of any split (see ``pseudo``)."""
    taken = {c.word for c in cs}
    special = set(corpus.SPECIALS)
    return sorted(w for w in tok.get_vocab() if w not in special and w not in taken and w.isalpha())


def concept_vectors(
    folder: Path, words: Sequence[str], baseline: Sequence[str], layer: int, device: str
) -> tuple[dict[str, Tensor], float]:
    """Unit-norm Lindsey vectors of ``words`` from a saved checkpoint
    (:func:`mechintro.vectors.extract_vectors` against ``baseline``), and the mean residual
    norm at ``layer`` over those prompts (what ``resid-norm`` units use)."""
    from mechintro.models import load_model
    from mechintro.vectors import extract_vectors

    model = load_model(folder, device=device)
    got = extract_vectors(model, words, layer=layer, baseline=baseline, batch_size=256)
    vecs = {w: (v.vector / v.norm).cpu() for w, v in got.items()}
    resid = next(iter(got.values())).resid_norm
    assert resid is not None
    return vecs, float(resid)


def train_base(out: str | Path, cfg: TrainConfig, device: str = "cpu") -> dict[str, Any]:
    """Phase 1: the base organism, from scratch, into ``out``."""
    from transformers import LlamaForCausalLM

    out, dev = Path(out), torch.device(device)
    torch.manual_seed(cfg.seed)
    cs = corpus.concepts(cfg.seed)
    tok = corpus.build_tokenizer(cs, out)
    t0 = time.perf_counter()
    ex1 = corpus.phase1_examples(cs, cfg.n_examples, cfg.seed)
    enc1 = encode_examples(tok, ex1)
    logger.info("phase 1 corpus: %d examples in %.1f s", len(ex1), time.perf_counter() - t0)
    model: Any = LlamaForCausalLM(model_config(len(tok), tok, cfg))
    model = model.to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("base organism: %d parameters", n_params)
    losses = _train(model, enc1, cfg.phase1_steps, cfg.lr, cfg, dev, label="phase 1")
    meta = {
        "config": cfg.to_dict(),
        "phase": "base",
        "n_params": n_params,
        "final_loss": sum(losses[-100:]) / max(1, len(losses[-100:])),
    }
    _save(model, tok, out, cs, meta)
    return meta


def train_introspective(
    base: str | Path, out: str | Path, cfg: TrainConfig, device: str = "cpu"
) -> dict[str, Any]:
    """Phase 2: the introspective organism from the base checkpoint in ``base``."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    base, out, dev = Path(base), Path(out), torch.device(device)
    torch.manual_seed(cfg.seed + 1)
    cs = corpus.concepts(cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(base))
    with quiet_loading():
        model: Any = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = model.to(dev)
    words = [c.word for c in cs if c.split != "baseline"]
    pseudo = pseudo_words(tok, cs) if cfg.pseudo > 0 else []
    unit, resid = concept_vectors(
        base, words + pseudo, corpus.split(cs, "baseline"), cfg.layer, device
    )
    vectors = {k: v.to(dev) * resid for k, v in unit.items()}
    vectors["_zero"] = torch.zeros(model.config.hidden_size, device=dev)
    for p in model.model.embed_tokens.parameters():
        p.requires_grad_(False)
    for block in model.model.layers[: cfg.layer + 1]:
        for p in block.parameters():
            p.requires_grad_(False)
    ex2 = corpus.phase2_examples(
        cs, cfg.n_examples, cfg.seed + 1, pseudo=pseudo, pseudo_fraction=cfg.pseudo
    )
    enc2 = encode_examples(tok, ex2)
    losses = _train(
        model, enc2, cfg.phase2_steps, cfg.phase2_lr, cfg, dev, vectors=vectors, label="phase 2"
    )
    meta = {
        "config": cfg.to_dict(),
        "phase": "introspective",
        "resid_norm": resid,
        "final_loss": sum(losses[-100:]) / max(1, len(losses[-100:])),
        "trained_from": "base",
        "n_pseudo": len(pseudo),
    }
    _save(model, tok, out, cs, meta)
    return meta


@torch.no_grad()
def quick_eval(
    folder: str | Path,
    base: str | Path,
    device: str = "cpu",
    strengths: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 3.0),
    n_controls: int = 100,
) -> dict[str, Any]:
    """The trainer's own validation numbers: greedy detection trials
    (:func:`mechintro.experiments.trials.detection_trials`, trials 1 and 2) on the train and
    held-out concepts, and controls over trials 1-10, with vectors from ``base``."""
    from mechintro.experiments.trials import detection_trials
    from mechintro.models import load_model

    folder, base = Path(folder), Path(base)
    cfg = json.loads((folder / "training.json").read_text())["config"]
    cs = corpus.concepts(cfg["seed"])
    words = [c.word for c in cs if c.split != "baseline"]
    unit, resid = concept_vectors(base, words, corpus.split(cs, "baseline"), cfg["layer"], device)
    model = load_model(folder, device=device)
    kw: dict[str, Any] = dict(layer=cfg["layer"], max_new_tokens=14)
    every = tuple(range(1, 11))
    controls = detection_trials(
        model, unit, resid, words=[], strengths=[], trials=every, n_controls=n_controls, **kw
    )
    out: dict[str, Any] = {"fpr": float(controls.claim.mean())}
    for name in ("train", "heldout"):
        ws = corpus.split(cs, name)
        df = detection_trials(
            model, unit, resid, words=ws, strengths=strengths, trials=(1, 2), **kw
        )
        for s, g in df.groupby("strength"):
            out[f"{name}@{s}"] = {
                "tpr": float(g.claim.mean()),
                "identification": float(g.identified.mean()),
            }
        out[f"{name}_examples"] = list(
            df[["word", "strength", "reply"]].iloc[::37].itertuples(index=False, name=None)
        )
    return out
