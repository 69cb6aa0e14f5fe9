"""A parity self-check to run on any loaded model before trusting its numbers.

Three identities, each measured as the largest absolute logit difference:

* **backend vs HF**: the TransformerLens model against a plain Hugging Face forward of the
  same weights (for a bridge, its own wrapped HF model; for a HookedTransformer, pass the
  HF model);
* **batch vs single**: a prompt run in a left-padded batch next to a longer prompt (one row
  injected, the other a control) against the same prompt run alone;
* **cache vs no cache**: greedy generation under an injection, KV cache on vs off, logits
  of every step compared.

On fp32 CPU the differences are ~1e-5; in bf16 on a GPU they are ~1e-2. A large value is
a bug (padding, positions, a hook lost on decode steps) or a misloaded model.

Example::

    report = parity_check(model, "Trial 1: Do you detect an injected thought?")
    assert report.ok(atol=1e-3), report
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from mechintro.generation import generate
from mechintro.inject import Injection, injected
from mechintro.models import TLModel, backend_of, d_model, n_layers
from mechintro.prompts import Prompt, encode
from mechintro.twin import positions


@dataclass(frozen=True)
class ParityReport:
    backend_vs_hf: float  # NaN when no HF model was available to compare against
    batch_vs_single: float
    cache_vs_nocache: float
    backend: str
    dtype: str
    device: str

    def ok(self, atol: float) -> bool:
        values = (self.batch_vs_single, self.cache_vs_nocache, self.backend_vs_hf)
        return all(v <= atol for v in values if v == v)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def _forward(model: TLModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pos = positions(mask)
    if backend_of(model) == "bridge":
        return model(ids, attention_mask=mask, position_ids=pos).float()
    return model(ids, attention_mask=mask).float()


@torch.no_grad()
@torch.no_grad()
def parity_check(
    model: TLModel,
    prompt: Prompt | str,
    *,
    hf_model: Any = None,
    layer: int | None = None,
    strength: float = 4.0,
    new_tokens: int = 6,
    seed: int = 0,
) -> ParityReport:
    """Measure the three parity identities on ``model`` for ``prompt``."""
    p = Prompt.chat(prompt) if isinstance(prompt, str) else prompt
    long = Prompt.chat("A longer neighbour so that the first row is left-padded. " * 3)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    single = encode(model.tokenizer, [p], device=device)
    pair = encode(model.tokenizer, [p, long], device=device)
    L = layer if layer is not None else n_layers(model) // 2
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d_model(model), generator=g)
    v = v / v.norm() * _resid_scale(model, single, L)

    hf = hf_model if hf_model is not None else getattr(model, "original_model", None)
    backend_vs_hf = float("nan")
    if hf is not None:
        ref = hf(single.input_ids, attention_mask=single.attention_mask).logits.float()
        backend_vs_hf = _maxdiff(_forward(model, single.input_ids, single.attention_mask), ref)

    inj_single = Injection(layer=L, vector=v, strength=strength, mode="all")
    inj_pair = Injection(layer=L, vector=v, strength=[strength, 0.0], mode="all")
    with injected(model, inj_single, single):
        alone = _forward(model, single.input_ids, single.attention_mask)
    with injected(model, inj_pair, pair):
        both = _forward(model, pair.input_ids, pair.attention_mask)
    real = pair.attention_mask[0].bool()
    batch_vs_single = _maxdiff(both[0, real], alone[0])

    steps = []
    for use_cache in (True, False):
        out = generate(
            model,
            single,
            injection=inj_single,
            max_new_tokens=new_tokens,
            use_cache=use_cache,
            keep_logits=True,
            stop_ids=[],
        )
        assert out.logits is not None
        steps.append(torch.stack(out.logits))
    cache_vs_nocache = _maxdiff(steps[0], steps[1])
    return ParityReport(
        backend_vs_hf=backend_vs_hf,
        batch_vs_single=batch_vs_single,
        cache_vs_nocache=cache_vs_nocache,
        backend=backend_of(model),
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
    )


def _resid_scale(model: TLModel, batch: Any, layer: int) -> float:
    """Mean residual norm at ``layer``: the injection is as strong as the stream itself."""
    _, cache = model.run_with_cache(
        batch.input_ids, names_filter=lambda n: n == f"blocks.{layer}.hook_resid_post"
    )
    return float(cache[f"blocks.{layer}.hook_resid_post"].float().norm(dim=-1).mean())


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())
