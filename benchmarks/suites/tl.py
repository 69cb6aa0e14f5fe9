"""Rows of one TransformerLens backend: TL's own tools, and mechintro on it."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.shapes import concept_words
from benchmarks.suites.common import Bench, Inputs, new_tokens, tl_hook
from benchmarks.suites.patch import patch_rows
from benchmarks.suites.transcoders import transcoder_rows
from benchmarks.table import Row


def _tl_forward_row(b: Bench, model: Any, x: Inputs, backend: str) -> Row:
    ids = x.tiled.input_ids.to(b.s.device)
    name = "TransformerBridge forward" if backend == "bridge" else "HookedTransformer forward"
    return b.time(
        "forward",
        name,
        backend,
        "row",
        lambda: model(ids),
        b.s.patch_batch,
        tokens_per_unit=b.s.patch_tokens,
    )


def tl_phase(b: Bench, model: Any, x: Inputs, backend: str, plain: dict[str, Row]) -> None:
    """Rows of one TransformerLens backend: TL's own tools and mechintro on it. On the bridge,
    mechintro's rows run on its plain HF twin (the default), and again on the bridge itself
    (``..., bridge path``: ``fast=False``), side by side."""
    s = b.s
    fwd = None
    if "forward" in s.groups or "patching" in s.groups:
        fwd = _tl_forward_row(b, model, x, backend)
    if "forward" in s.groups:
        forward_rows(b, model, x, backend)
    if "detection" in s.groups:
        detection_rows(b, model, x, backend)
        sweep_rows(b, model, x, backend)
    if "patching" in s.groups:
        patch_rows(b, model, x, backend, plain.get("plain"), plain.get("plain_eager"), fwd)
    if "vectors" in s.groups:
        vector_rows(b, model, x, backend)
    if "transcoders" in s.groups and backend == "bridge":
        transcoder_rows(b, model, x)


def forward_rows(b: Bench, model: Any, x: Inputs, backend: str) -> None:
    """The backend's forward under mechintro's injection; on the bridge, its twin's too."""
    from mechintro.generation import fast_path
    from mechintro.inject import Injection, injected

    s = b.s
    ids = x.tiled.input_ids.to(s.device)
    inj = Injection(x.layer, x.vectors[0], 4.0, mode="all")
    tl_name = "TransformerBridge" if backend == "bridge" else "HookedTransformer"

    def injected_fwd() -> Any:
        with injected(model, inj, x.tiled):
            return model(ids)

    rows: list[tuple[str, Any]] = [(f"{tl_name} forward + mechintro injection", injected_fwd)]
    if backend == "bridge":  # the plain HF model mechintro's fast path runs (the twin)

        def twin_fwd() -> Any:
            with fast_path(model) as hf:
                return hf(input_ids=ids, use_cache=False)

        def twin_injected_fwd() -> Any:
            with fast_path(model, inj, x.tiled) as hf:
                return hf(input_ids=ids, use_cache=False)

        rows += [
            ("twin forward (plain HF, the bridge's weights)", twin_fwd),
            ("twin forward + mechintro injection", twin_injected_fwd),
        ]
    for name, fn in rows:
        b.time("forward", name, backend, "row", fn, s.patch_batch, tokens_per_unit=s.patch_tokens)


def detection_rows(b: Bench, model: Any, x: Inputs, backend: str) -> None:
    """TL's own per-trial generation with a hook, and one batched mechintro ``generate``."""
    from mechintro.generation import generate
    from mechintro.inject import Injection

    s = b.s
    dev, N = s.device, s.new_tokens
    tl_name = "TransformerBridge" if backend == "bridge" else "HookedTransformer"
    ids = x.single.input_ids.to(dev)
    hook = tl_hook(x.deltas[0], int(x.single.position("trial")[0]))

    def per_trial() -> Any:
        with model.hooks(fwd_hooks=[(f"blocks.{x.layer}.hook_resid_post", hook)]):
            return model.generate(
                ids,
                max_new_tokens=N,
                stop_at_eos=False,
                do_sample=False,
                use_past_kv_cache=True,
                verbose=False,
            )

    b.time(
        "detection",
        f"per-trial {tl_name}.generate + hook",
        backend,
        "trial",
        per_trial,
        1,
        tokens_per_unit=N,
        repeats=s.per_trial,
        target=50.0,
        how=f"median of {s.per_trial} trials run one at a time",
        after=new_tokens(x.single.length),
    )
    inj = Injection(x.layer, x.vectors, x.strengths, mode="from-trial")
    variants: list[tuple[str, dict[str, Any]]] = [("", {})]
    if backend == "bridge":
        variants += [
            (", static cache, no CUDA graph", {"cuda_graph": False, "static_cache": True}),
            (", DynamicCache", {"static_cache": False}),
            (", bridge path", {"fast": False}),
        ]
    for suffix, kw in variants:

        def call(kw: dict[str, Any] = kw) -> Any:
            return generate(model, x.detection, injection=inj, max_new_tokens=N, stop_ids=[], **kw)

        b.time(
            "detection",
            f"mechintro generate, batch {s.batch}{suffix}",
            backend,
            "trial",
            call,
            s.batch,
            tokens_per_unit=N,
            after=lambda g: {
                "shared_prefix": g.record.settings["shared_prefix"],
                "new_tokens": g.steps,
                "path": g.record.settings["path"],
                "static_cache": g.record.settings["static_cache"],
                "cuda_graph": g.record.settings["cuda_graph"],
            },
        )


def sweep_rows(b: Bench, model: Any, x: Inputs, backend: str) -> None:
    from mechintro.experiments.sweeps import SweepSpec, run_sweep
    from mechintro.vectors import ConceptVector

    s = b.s
    total = s.batch * s.sweep_batches
    numbers = tuple(range(1, 5))
    n_concepts = max(1, (total * 7 // 8) // len(numbers))
    controls = max(0, total - n_concepts * len(numbers))
    words = concept_words(n_concepts)
    vecs = {
        x.layer: {
            w: ConceptVector(
                w,
                x.vectors[i % s.batch],
                x.layer,
                "lindsey",
                resid_norm=math.sqrt(b.shape.dims().d_model),
            )
            for i, w in enumerate(words)
        }
    }
    # (temperature, on the bridge itself): the bridge's reference, sampled, and the old path
    runs = [(0.0, False), (1.0, False), (0.0, True)] if backend == "bridge" else [(0.0, False)]
    for temperature, slow in runs:
        spec = SweepSpec(
            concepts=tuple(words),
            layers=(x.layer,),
            strengths=(4.0,),
            trial_numbers=numbers,
            n_controls=controls,
            max_new_tokens=s.new_tokens,
            temperature=temperature,
            readout=False,
        )
        root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
        count = iter(range(10**6))

        def sweep(
            spec: SweepSpec = spec,
            root: Path = root,
            count: Iterator[int] = count,
            slow: bool = slow,
        ) -> Any:
            return run_sweep(
                model,
                spec,
                root / str(next(count)),
                vectors=vecs,
                batch_size=s.batch,
                progress=False,
                fast=False if slow else None,  # the bridge's own path: before the twin existed
            )

        name = f"mechintro run_sweep, batch {s.batch}"
        if temperature:
            name += f", sampled T={temperature:g}"
        if slow:
            name += ", bridge path"
        b.time(
            "detection",
            name,
            backend,
            "trial",
            sweep,
            len(spec),
            tokens_per_unit=s.new_tokens,
            ref=backend == "bridge" and not temperature and not slow,
            how=f"median of {s.repeats} sweeps of {len(spec)} trials (fresh folder each, "
            "vectors given, readout off)",
            after=lambda df: {"mean_new_tokens": float(df.n_tokens.mean())},
        )
        shutil.rmtree(root, ignore_errors=True)


def vector_rows(b: Bench, model: Any, x: Inputs, backend: str) -> None:
    from mechintro.models import tokenizer_of
    from mechintro.prompts import encode
    from mechintro.vectors import METHODS, extract_vectors, word_list

    s, dev = b.s, b.s.device
    n = len(x.words)
    b.time(
        "vectors",
        f"mechintro extract_vectors, {n} concepts",
        backend,
        "concept",
        lambda: extract_vectors(model, x.words, layer=x.layer),
        n,
        ref=backend == "bridge",
        how=f"median of {s.repeats} calls (100 baseline words, batches of 32, no cache)",
    )
    if backend == "bridge":  # the bridge itself, as every extraction ran before the twin
        b.time(
            "vectors",
            f"mechintro extract_vectors, {n} concepts, bridge path",
            backend,
            "concept",
            lambda: extract_vectors(model, x.words, layer=x.layer, fast=False),
            n,
            how=f"median of {s.repeats} calls, fast=False",
        )
    m = METHODS["lindsey"]
    n_base = len(word_list(m.baseline))
    k = min(s.per_concept, n)
    tok = tokenizer_of(model)
    ids = [encode(tok, [m.prompt(w)]).input_ids.to(dev) for w in x.words[:k]]
    name = f"blocks.{x.layer}.hook_resid_post"

    def one_by_one() -> Any:
        for i in ids:
            _, cache = model.run_with_cache(i)
            cache[name][0, -1].float().cpu()

    scale = (n + n_base) / n  # the baseline words' prompts, spread over the concepts
    b.time(
        "vectors",
        "per-concept run_with_cache (full cache)",
        backend,
        "concept",
        one_by_one,
        k / scale,
        repeats=1,
        how=f"{k} prompts timed one at a time, ×{scale:.2f} for the {n_base} baseline prompts",
    )
