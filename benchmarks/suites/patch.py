"""The patching groups: mechintro's batched sweep against transformer_lens.patching."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import traceback
from typing import Any

from benchmarks.suites.common import Bench, Inputs
from benchmarks.table import Row


def patch_rows(
    b: Bench,
    model: Any,
    x: Inputs,
    backend: str,
    hf_plain: Row | None,
    hf_eager: Row | None,
    own_plain: Row | None,
) -> None:
    import pandas as pd

    from mechintro.analysis.patching import activation_patch, yes_no_gap

    s, dev = b.s, b.s.device
    dims = b.shape.dims()
    n_layers, n_heads = dims.n_layers, dims.n_heads
    T = x.corrupt.length
    metric = yes_no_gap(model)
    cases = (
        (
            "patch resid_pre",
            "resid_pre",
            "each",
            n_layers * T,
            "get_act_patch_resid_pre",
            ["layer", "pos"],
            T,
        ),
        (
            "patch heads",
            "head",
            "all",
            n_layers * n_heads,
            "get_act_patch_attn_head_out_all_pos",
            ["layer", "head"],
            n_heads,
        ),
    )
    for group, component, positions, cells, tl_fn, cols, width in cases:
        # on the bridge: its twin (the reference), then the bridge itself
        for fast in (None, False) if backend == "bridge" else (None,):

            def ours(c: str = component, p: str = positions, fast: bool | None = fast) -> Any:
                return activation_patch(
                    model,
                    x.corrupt,
                    x.clean,
                    component=c,
                    positions=p,
                    batch_size=s.patch_batch,
                    fast=fast,
                )

            b.time(
                group,
                "mechintro activation_patch" + (", bridge path" if fast is False else ""),
                backend,
                "cell",
                ours,
                cells,
                tokens_per_unit=T,
                ref=backend == "bridge" and fast is None,
                how=f"median of {s.repeats} sweeps of {cells} cells, {s.patch_batch} rows/forward",
            )
        if backend == "bridge" and dev.startswith("cuda"):  # without the kept capture
            from mechintro.generation import release_captures

            def first(ours: Any = ours) -> Any:
                release_captures()
                return ours(fast=None)

            b.time(
                group,
                "mechintro activation_patch, first sweep of its shape",
                backend,
                "cell",
                first,
                cells,
                tokens_per_unit=T,
                how=f"median of {s.repeats} sweeps, each capturing its CUDA graph (the kept "
                "capture dropped before each): the first forward eager, the second captured",
            )
        k = min(s.tl_cells, cells)
        picks = [round(i * (cells - 1) / max(1, k - 1)) for i in range(k)]
        df = pd.DataFrame([(p // width, p % width) for p in picks], columns=cols)
        tl_name = f"transformer_lens.patching.{tl_fn}"
        try:
            from transformer_lens import patching as tlp

            _, cache = model.run_with_cache(x.clean.input_ids.to(dev))
            fn = getattr(tlp, tl_fn)
            corrupt = x.corrupt.input_ids.to(dev)

            def tl(fn: Any = fn, df: Any = df, cache: Any = cache, corrupt: Any = corrupt) -> Any:
                with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
                    return fn(
                        model,
                        corrupt,
                        cache,
                        lambda lg: metric(lg).sum(),
                        index_axis_names=None,
                        index_df=df,
                    )

            b.time(
                group,
                tl_name,
                backend,
                "cell",
                tl,
                k,
                tokens_per_unit=T,
                target=50.0,
                repeats=1,
                how=f"{k} of {cells} cells timed (one forward each), per cell",
            )
            del cache
        except Exception as e:
            traceback.print_exc()
            b.row(
                group=group,
                name=tl_name,
                backend=backend,
                unit="cell",
                status="error",
                note=f"{type(e).__name__}: {e}"[:160],
                target=50.0,
            )
        # the target is ≥ 0.8× the bridge's own forward; the twin runs HF's, so the
        # plain HF forward is held to it as well: with the benchmark's attention (sdpa by
        # default) and with the bridge's (eager), which the twin runs
        target = 0.8 if backend == "bridge" else None
        for plain, label in (
            (own_plain, "plain forward, same tokens"),
            (hf_plain, "plain HF forward, same tokens"),
            (hf_eager, "plain HF forward, eager attention, same tokens"),
        ):
            if plain is None or (plain.backend == "hf" and backend != "bridge"):
                continue
            b.add(
                dataclasses.replace(
                    plain,
                    group=group,
                    name=label,
                    unit="cell",
                    ref=False,
                    target=target,
                    ratio=None,
                    note=f"{s.patch_batch} rows of {T} tokens per forward (from the forward group)",
                )
            )
        if backend == "bridge":  # the twin's plain forward, timed right after the sweeps
            from mechintro.generation import fast_path

            ids = x.tiled.input_ids.to(dev)

            def twin_forward(ids: Any = ids) -> Any:
                with fast_path(model) as twin:  # the plain HF model the fast path runs
                    return twin(input_ids=ids, use_cache=False)

            b.time(
                group,
                "twin forward, same tokens, timed here",
                backend,
                "cell",
                twin_forward,
                s.patch_batch,
                tokens_per_unit=T,
                target=0.8,
                how=f"median of {s.repeats} forwards of {s.patch_batch}×{T} tokens, in the "
                "same phase as the sweeps (the forward group's rows come from earlier)",
            )
