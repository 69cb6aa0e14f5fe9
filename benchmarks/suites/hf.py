"""Plain Hugging Face rows, measured before anything wraps the model."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.suites.common import Bench, Inputs, hf_generate, hf_hook, new_tokens
from benchmarks.table import Row


def hf_phase(b: Bench, hf: Any, x: Inputs, tok: Any) -> dict[str, Row]:
    """Plain Hugging Face rows. Returns the plain-forward rows the patch groups reuse."""
    s, out = b.s, {}
    dev, N = s.device, s.new_tokens
    if "detection" in s.groups:
        one = x.deltas[:1]
        start = x.single.position("trial")

        def per_trial() -> Any:
            with hf_hook(hf, x.layer, one, start):
                return hf_generate(hf, x.single, N, dev)

        b.time(
            "detection",
            "per-trial HF generate + hook",
            "hf",
            "trial",
            per_trial,
            1,
            tokens_per_unit=N,
            repeats=s.per_trial,
            how=f"median of {s.per_trial} trials run one at a time",
            after=new_tokens(x.single.length),
        )

        def batched() -> Any:
            with hf_hook(hf, x.layer, x.deltas, x.detection.position("trial")):
                return hf_generate(hf, x.detection, N, dev)

        b.time(
            "detection",
            f"batched HF generate + hook, batch {s.batch}",
            "hf",
            "trial",
            batched,
            s.batch,
            tokens_per_unit=N,
            target=0.9,
            note="the fastest a user writes by hand (no prefix sharing)",
            after=new_tokens(x.detection.length),
        )
    if "forward" in s.groups or "patching" in s.groups:
        ids = x.tiled.input_ids.to(dev)
        R, T = s.patch_batch, s.patch_tokens
        impl = s.attn  # what build_model gave the model
        variants = [("plain", impl, "plain HF forward", "")]
        if impl != "eager":  # the attention the bridge (and so its twin) runs: like for like
            eager = ("plain HF forward, eager attention", "; the bridge's attention")
            variants.append(("plain_eager", "eager", *eager))
        for key, attn, name, extra in variants:
            hf.set_attn_implementation(attn)
            out[key] = b.time(
                "forward",
                name,
                "hf",
                "row",
                lambda: hf(input_ids=ids, use_cache=False),
                R,
                tokens_per_unit=T,
                ref=key == "plain",
                how=f"median of {s.repeats} forwards of {R}×{T} tokens{extra}",
            )
        hf.set_attn_implementation(impl)
        if "forward" in s.groups:
            start = torch.zeros(R, dtype=torch.long)
            delta = x.deltas[:1].expand(R, -1)

            def hooked_fwd() -> Any:
                with hf_hook(hf, x.layer, delta, start):
                    return hf(input_ids=ids, use_cache=False)

            b.time(
                "forward",
                "HF forward + hand-written hook",
                "hf",
                "row",
                hooked_fwd,
                R,
                tokens_per_unit=T,
            )
    if "vectors" in s.groups:
        from mechintro.prompts import encode
        from mechintro.vectors import METHODS, word_list

        m = METHODS["lindsey"]
        prompts = [m.prompt(w) for w in x.words + word_list(m.baseline)]
        batches = [encode(tok, prompts[i : i + 32], device=dev) for i in range(0, len(prompts), 32)]

        def forward_all() -> Any:
            for p in batches:
                hf(input_ids=p.input_ids, attention_mask=p.attention_mask, use_cache=False)

        b.time(
            "vectors",
            "plain HF forward of the same prompts",
            "hf",
            "concept",
            forward_all,
            len(x.words),
            how=f"full depth, batches of 32, {len(prompts)} prompts "
            f"({len(x.words)} concepts + baseline)",
        )
    return out
