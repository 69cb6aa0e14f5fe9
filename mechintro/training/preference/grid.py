"""Macar et al.'s DPO mechanism ablation as a grid of named conditions (docs/protocols.md §7).

Macar et al. (2026, §3.3; ``experiments/03f_dpo_mechanism_ablation.py``) fine-tune the SFT
checkpoint of OLMo-3.1-32B with LoRA (r 64, α 128, dropout 0, every linear layer; lr 1e-5,
one epoch, 8 pairs an update) under 16 conditions and measure detection after each, to find
what about DPO brings introspection. :data:`CONDITIONS` names them; each is an objective of
:mod:`.objectives` on a version of the preference data:

============================ ==================== =========================================
condition                    objective            data
============================ ==================== =========================================
dpo                          DPO, frozen reference the pairs
dpo-no-reference             DPO, reference-free   the pairs
dpo-shuffled                 DPO                   chosen/rejected swapped at random per pair
dpo-reversed                 DPO                   chosen/rejected swapped in every pair
margin                       margin, no reference  the pairs
margin-kl                    margin + KL           the pairs
margin-kl-nli, -fact-checking, margin + KL         pairs of that data domain (``domain_data``)
-hallucination, -prompt-injection
sft-chosen / sft-rejected    SFT                   the chosen / the rejected replies
kl-chosen / kl-rejected      SFT + KL              the chosen / the rejected replies
sft-external                 SFT                   instruction data (``sft_data``)
random-lora                  none                  untrained adapters with random weights
============================ ==================== =========================================

Preference data: a JSONL file of ``{"prompt", "chosen", "rejected"}`` objects (optional
``concept`` and ``strength`` inject that concept's vector into the pair), checked line by
line (:func:`load_pairs`), or by default mechintro's own introspection pairs
(:func:`~mechintro.training.preference.objectives.introspection_pairs`: injected trials
prefer the detection reply, controls prefer the denial) on ``words``. Conditions whose data
is not given (a domain, ``sft_data``) are listed as skipped, never run on other data.

:func:`run_dpo_grid` evaluates the model before any training (``baseline``), then for each
condition adds fresh adapters, trains, measures held-out detection with the adapters in place
(TPR, FPR, introspection rate; rule grader) and removes them again, never merged, so every
condition starts from the same weights, bit for bit. Rows go to ``out/dpo_grid.csv`` as they
finish; a rerun skips finished conditions.

Example::

    table = run_dpo_grid(model, {"data": "prefs.jsonl", "eval_words": words, "eval_layer": 37},
                         Path("runs/dpo"), small=False)
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.prompts import Prompt
from mechintro.training.preference.objectives import (
    PreferenceConfig,
    PreferencePair,
    introspection_pairs,
    train_preferences,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

#: condition -> (objective or None, data); data: "pairs", "shuffled", "reversed", "rejected",
#: "domain:<name>", "sft-external" or "none"
CONDITIONS: Mapping[str, tuple[str | None, str]] = {
    "dpo": ("dpo", "pairs"),
    "sft-chosen": ("sft", "pairs"),
    "sft-rejected": ("sft", "rejected"),
    "dpo-shuffled": ("dpo", "shuffled"),
    "dpo-reversed": ("dpo", "reversed"),
    "dpo-no-reference": ("dpo-reference-free", "pairs"),
    "margin": ("margin", "pairs"),
    "margin-kl": ("margin-kl", "pairs"),
    "margin-kl-nli": ("margin-kl", "domain:nli"),
    "margin-kl-fact-checking": ("margin-kl", "domain:fact-checking"),
    "margin-kl-hallucination": ("margin-kl", "domain:hallucination"),
    "margin-kl-prompt-injection": ("margin-kl", "domain:prompt-injection"),
    "random-lora": (None, "none"),
    "kl-chosen": ("sft-kl", "pairs"),
    "kl-rejected": ("sft-kl", "rejected"),
    "sft-external": ("sft", "sft-external"),
}


@dataclass(frozen=True)
class DPOGridConfig:
    """The grid's settings; the preset ``macar-dpo`` holds Macar et al.'s."""

    conditions: tuple[str, ...] = tuple(CONDITIONS)
    data: str | None = None  # JSONL of {prompt, chosen, rejected}; None: introspection pairs
    domain_data: Mapping[str, str] = field(default_factory=dict)  # domain -> JSONL of pairs
    sft_data: str | None = None  # JSONL of {prompt, chosen} for sft-external
    words: tuple[str, ...] = ()  # concepts of the introspection pairs (default data)
    eval_words: tuple[str, ...] = ()  # held-out concepts the evaluation injects
    baseline: tuple[str, ...] = ()  # the vectors' baseline words (empty: the model's default)
    layer: int | None = None  # injection layer of the pairs (None: eval_layer)
    strengths: tuple[float, ...] = (1.0, 2.0)  # the pairs' strengths, in `unit`
    unit: str = "resid-norm"
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"
    lr: float = 1e-5
    epochs: int = 1
    batch_size: int = 8
    max_steps: int | None = None  # cap on steps per condition
    beta: float = 0.1
    kl_weight: float = 0.1
    margin: float = 1.0
    eval_layer: int | None = None  # None: the model's block at 0.6 of the depth
    eval_strength: float = 1.0  # in units of the residual norm at eval_layer
    eval_temperature: float = 1.0
    eval_max_new_tokens: int = 100
    n_controls: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))
        for name in ("words", "eval_words", "baseline"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "strengths", tuple(float(s) for s in self.strengths))
        object.__setattr__(self, "domain_data", dict(self.domain_data))
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"unknown conditions {unknown}: use some of {list(CONDITIONS)}")
        domains = {d.split(":", 1)[1] for _, d in CONDITIONS.values() if d.startswith("domain:")}
        extra = sorted(set(self.domain_data) - domains)
        if extra:
            raise ValueError(f"unknown data domains {extra}: use some of {sorted(domains)}")
        for name in ("lora_r", "lora_alpha", "epochs", "batch_size", "eval_max_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.n_controls < 0:
            raise ValueError("n_controls must be >= 0")

    @property
    def targets(self) -> tuple[str, ...]:
        t = self.target_modules
        return (t,) if isinstance(t, str) else tuple(t)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_KEYS: dict[str, type | tuple[type, ...]] = {
    "prompt": str,
    "chosen": str,
    "rejected": str,
    "concept": str,
    "strength": (int, float),
}


def load_pairs(path: str | Path, *, rejected: bool = True) -> list[PreferencePair]:
    """Preference pairs from a JSONL file, one object a line: ``prompt``, ``chosen`` and (with
    ``rejected=True``) ``rejected``, non-empty strings; optional ``concept`` (a string) and
    ``strength`` (a number). The prompt becomes a user turn of the chat template. Every error
    names the file and line, and what to write there.

    Example::

        pairs = load_pairs("prefs.jsonl")   # {"prompt": "...", "chosen": "...", ...}
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no preference data file {p}: give a JSONL file")
    required = ("prompt", "chosen", "rejected") if rejected else ("prompt", "chosen")
    out = []
    for i, line in enumerate(p.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p} line {i}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object {{'prompt': ..., 'chosen': ...}}")
        missing = [k for k in required if k not in item]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing} (need {list(required)})")
        unknown = sorted(set(item) - set(_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; keys are {sorted(_KEYS)}")
        for k, v in item.items():
            if isinstance(v, bool) or not isinstance(v, _KEYS[k]):
                kind = "number" if k == "strength" else "string"
                raise ValueError(f"{where}: {k!r} must be a {kind}, got {v!r:.60}")
            if isinstance(v, str) and not v.strip():
                raise ValueError(f"{where}: {k!r} is empty")
        out.append(
            PreferencePair(
                Prompt.chat(item["prompt"]),
                item["chosen"],
                item.get("rejected"),
                item.get("concept"),
                float(item.get("strength", 0.0)),
            )
        )
    if not out:
        raise ValueError(f"{p} holds no pairs")
    return out


def condition_data(
    condition: str,
    pairs: Sequence[PreferencePair],
    *,
    domains: Mapping[str, Sequence[PreferencePair]] | None = None,
    sft: Sequence[PreferencePair] | None = None,
    seed: int = 0,
) -> list[PreferencePair] | None:
    """The training pairs of ``condition`` (:data:`CONDITIONS`), or None where its data was
    not given (a domain, ``sft``)."""
    _, data = CONDITIONS[condition]
    if data == "pairs":
        return list(pairs)
    if data == "reversed":
        return [replace(p, chosen=p.rejected or "", rejected=p.chosen) for p in pairs]
    if data == "shuffled":
        rng = random.Random(seed)
        return [
            replace(p, chosen=p.rejected or "", rejected=p.chosen) if rng.random() < 0.5 else p
            for p in pairs
        ]
    if data == "rejected":
        return [replace(p, chosen=p.rejected or "", rejected=None) for p in pairs]
    if data.startswith("domain:"):
        got = (domains or {}).get(data.split(":", 1)[1])
        return list(got) if got else None
    if data == "sft-external":
        return list(sft) if sft else None
    return []  # random-lora: nothing to train on


def run_dpo_grid(
    model: Any, cfg: Mapping[str, Any] | DPOGridConfig, out: Path, *, small: bool
) -> pd.DataFrame:
    """Every condition of ``cfg`` on ``model`` (a bridge), evaluated; see the module doc.

    ``small``: 2 optimiser steps per condition, 4 controls, 2 strengths... at most, 8 tokens.
    """
    import pandas as pd

    from mechintro.experiments.protocols.detection import TRIAL_QUESTION
    from mechintro.experiments.trials import detection_rates, detection_trials
    from mechintro.io import atomic_write_text
    from mechintro.models import layer_at_depth
    from mechintro.training.common import hf_model_of, seeded, unit_vectors
    from mechintro.training.lora import (
        LoRAConfig,
        add_lora,
        lora_parameters,
        unload_lora,
    )
    from mechintro.vectors import extract_vectors

    config = cfg if isinstance(cfg, DPOGridConfig) else DPOGridConfig(**dict(cfg))
    if small:
        config = replace(
            config,
            max_steps=2,
            n_controls=min(config.n_controls, 4),
            eval_max_new_tokens=min(config.eval_max_new_tokens, 8),
            eval_words=config.eval_words[:3],
            words=config.words[:4],
        )
    if not config.eval_words:
        raise ValueError("give eval_words: the held-out concepts the evaluation injects")
    eval_layer = config.eval_layer if config.eval_layer is not None else layer_at_depth(model, 0.6)
    layer = config.layer if config.layer is not None else eval_layer
    baseline = list(config.baseline) or None
    # the data, checked before any training
    pairs_layer_vectors: dict[str, Any] = {}
    if config.data:
        pairs = load_pairs(config.data)
    else:
        if not config.words:
            raise ValueError("give data (a JSONL of pairs) or words for the introspection pairs")
        made = LoRAConfig(  # the detection dialogue: "Trial n" where from-trial starts
            layer=layer,
            strengths=config.strengths,
            unit=config.unit,
            mode="from-trial",
            questions=(TRIAL_QUESTION,),
            prompt_format="chat",
            preamble=True,
            yes_target='Yes, I detect an injected thought. The injected word is "{c}".',
            no_target="No, I don't detect any injected thought in this trial.",
            seed=config.seed,
        )
        pairs = introspection_pairs(config.words, made)
    domains = {d: load_pairs(f) for d, f in config.domain_data.items()}
    sft = load_pairs(config.sft_data, rejected=False) if config.sft_data else None
    concepts = sorted({p.concept for ps in (pairs, *domains.values()) for p in ps if p.concept})
    resid = None
    if concepts:
        pairs_layer_vectors = dict(extract_vectors(model, concepts, layer=layer, baseline=baseline))
        resid = next(iter(pairs_layer_vectors.values())).resid_norm
    vecs = extract_vectors(model, list(config.eval_words), layer=eval_layer, baseline=baseline)
    eval_resid = next(iter(vecs.values())).resid_norm
    assert eval_resid is not None
    unit = unit_vectors(vecs, list(config.eval_words))

    def evaluate() -> dict[str, Any]:
        df = detection_trials(
            model,
            unit,
            eval_resid,
            layer=eval_layer,
            words=list(config.eval_words),
            strengths=(config.eval_strength,),
            n_controls=config.n_controls,
            temperature=config.eval_temperature,
            max_new_tokens=config.eval_max_new_tokens,
            seed=config.seed,
        )
        r = detection_rates(df, {})
        return {"tpr": r.tpr, "fpr": r.fpr, "introspection_rate": r.introspection_rate}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table_path = out / "dpo_grid.csv"
    rows: list[dict[str, Any]] = []
    if table_path.exists():
        rows = pd.read_csv(table_path).to_dict("records")
    done = {r["condition"] for r in rows}

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        atomic_write_text(table_path, pd.DataFrame(rows).to_csv(index=False))

    if "baseline" not in done:
        record({"condition": "baseline", "objective": None, "status": "ok", **evaluate()})
    hf = hf_model_of(model)
    needs_ref = any(CONDITIONS[c][0] in ("dpo", "sft-kl", "margin-kl") for c in config.conditions)
    reference = copy.deepcopy(hf).eval() if needs_ref else None
    lora = LoRAConfig(
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        target_modules=config.targets,
    )
    for condition in config.conditions:
        if condition in done:
            continue
        objective, _ = CONDITIONS[condition]
        data = condition_data(condition, pairs, domains=domains, sft=sft, seed=config.seed)
        base = {"condition": condition, "objective": objective}
        if data is None:
            need = "sft_data" if condition == "sft-external" else "domain_data"
            record({**base, "status": f"skipped: give {need} for {condition}"})
            continue
        with seeded(config.seed, next(hf.parameters()).device):
            add_lora(hf, lora, random_init=condition == "random-lora")
        try:
            row: dict[str, Any] = {**base, "status": "ok", "n_pairs": len(data)}
            if objective is not None:
                steps = config.epochs * math.ceil(len(data) / config.batch_size)
                steps = min(steps, config.max_steps) if config.max_steps else steps
                pcfg = PreferenceConfig(
                    objective=objective,
                    beta=config.beta,
                    kl_weight=config.kl_weight,
                    margin=config.margin,
                    lr=config.lr,
                    steps=steps,
                    batch_size=config.batch_size,
                    schedule="constant",
                    layer=layer if concepts else None,
                    unit=config.unit,
                    seed=config.seed,
                )
                res = train_preferences(
                    model,
                    data,
                    pcfg,
                    reference=reference,
                    vectors=pairs_layer_vectors or None,
                    resid_norm=resid,
                    parameters=lora_parameters(hf),
                )
                row.update(steps=res.steps, final_loss=res.mean_loss(5))
            row.update(evaluate())  # the adapters unmerged: removing them restores the weights
        finally:
            unload_lora(hf)
        record(row)
    return pd.DataFrame(rows)
