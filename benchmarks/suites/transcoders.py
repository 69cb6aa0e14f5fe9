"""Transcoder feature caches and steering attribution."""

from __future__ import annotations

import contextlib
import math
import traceback
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from benchmarks.suites.common import Bench, Inputs

CACHE_ROW = "feature cache: bytes stored vs dense (≤ 2%)"
RESIDENT_ROW = "transcoder layers resident on the GPU (≤ 1)"


def random_transcoders(b: Bench, model: Any, x: Inputs) -> list[Any]:
    """JumpReLU transcoders of random weights for ``tc_layers`` blocks from the injection layer
    on, on the CPU in fp32, each feature's threshold set so that it fires on ``tc_l0 /
    tc_width`` of the tokens of a few detection prompts (the sparsity of real transcoders)."""
    from mechintro.analysis.transcoders import Transcoder, mlp_activations

    s, dims = b.s, b.shape.dims()
    d = dims.d_model
    layers = list(range(x.layer, min(dims.n_layers, x.layer + s.tc_layers)))
    calib = x.detection.rows(range(min(8, len(x.detection))))
    acts = mlp_activations(model, calib, layers)
    g = torch.Generator().manual_seed(1)
    out = []
    for layer in layers:
        W_enc = torch.randn(d, s.tc_width, generator=g) / math.sqrt(d)
        pre = (acts.x[layer].to(s.device) @ W_enc.to(s.device)).sort(0).values
        n = pre.shape[0]
        above = max(1, round(n * s.tc_l0 / s.tc_width))  # calibration tokens above θ
        theta = pre[n - above - 1].clamp(min=0).cpu()
        del pre
        W_dec = torch.randn(s.tc_width, d, generator=g) / math.sqrt(s.tc_width)
        zeros = torch.zeros(s.tc_width), torch.zeros(d)
        out.append(Transcoder(layer, W_enc, zeros[0], W_dec, zeros[1], threshold=theta))
    return out


@contextlib.contextmanager
def counting_device_copies() -> Iterator[dict[str, int]]:
    """Count the transcoder copies that ``feature_activations`` holds on the model's device
    at once: every copy it makes is a ``Transcoder.to`` (the public method, wrapped here for
    the block); a weak set sees which are still alive when the next is made."""
    from mechintro.analysis.transcoders import Transcoder

    real, alive = Transcoder.to, weakref.WeakSet[Any]()
    seen = {"copies": 0, "max_alive": 0}

    def to(tc: Any, *args: Any, **kwargs: Any) -> Any:
        moved = real(tc, *args, **kwargs)
        alive.add(moved)
        seen["copies"] += 1
        seen["max_alive"] = max(seen["max_alive"], len(alive))
        return moved

    Transcoder.to = to  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        Transcoder.to = real  # type: ignore[method-assign]


def transcoder_rows(b: Bench, model: Any, x: Inputs) -> None:
    """Transcoder feature caching on the bridge: ``feature_activations`` of every detection
    prompt for ``tc_layers`` transcoders, per cached token; bytes stored sparse against
    dense (target ≤ 2%), and transcoders on the device at once (target ≤ 1)."""
    from mechintro.analysis.transcoders import feature_activations
    from mechintro.analysis.transcoders.sites import token_mask

    s = b.s
    try:
        tcs = random_transcoders(b, model, x)
    except Exception as e:
        traceback.print_exc()
        for name in (CACHE_ROW, RESIDENT_ROW):
            b.row(
                group="transcoders",
                name=name,
                backend="bridge",
                unit="token",
                status="error",
                note=f"{type(e).__name__}: {e}"[:160],
            )
        return
    tokens = int(token_mask(model, x.detection).sum())
    with counting_device_copies() as seen:
        cache = b.time(
            "transcoders",
            CACHE_ROW,
            "bridge",
            "token",
            lambda: feature_activations(model, tcs, x.detection, batch_size=s.batch),
            tokens,
            ref=True,
            how=f"median of {s.repeats} calls: {len(tcs)} transcoders of {s.tc_width} features "
            f"(JumpReLU, ~{s.tc_l0} active), {tokens} tokens of {len(x.detection)} prompts",
            after=lambda fa: {
                "stored_bytes": fa.nbytes,
                "dense_bytes": fa.dense_nbytes,
                "l0": {layer: fa.l0(layer) for layer in fa.layers},
            },
        )
    if "steering" in s.groups:
        steering_rows(b, model, x, tcs)
    if cache.status != "ok" or cache.detail is None:
        return
    frac = cache.detail["stored_bytes"] / cache.detail["dense_bytes"]
    cache.bound, cache.met = "≤ 2% of dense", frac <= 0.02
    cache.note = (
        f"{cache.detail['stored_bytes'] / 1e6:.2f} MB stored (CSR) vs "
        f"{cache.detail['dense_bytes'] / 1e6:.1f} MB dense fp32: {100 * frac:.2f}%"
    )
    moved = seen["copies"] > 0
    b.row(
        group="transcoders",
        name=RESIDENT_ROW,
        backend="bridge",
        unit="token",
        bound="≤ 1 at a time",
        met=seen["max_alive"] <= 1,
        how="copies of a transcoder on the device, alive at once, during the calls above",
        note=f"at most {seen['max_alive']} of {seen['copies']} copies made"
        if moved
        else "the model is on the CPU: no transcoder was copied",
        detail=dict(seen),
        peak_bytes=cache.peak_bytes,
        extra_bytes=cache.extra_bytes,
    )


STEER_ROW = "steering attribution, 21 strengths, per strength point"
STEER_BASE = "plain forward of the same prompt"


def steering_rows(b: Bench, model: Any, x: Inputs, tcs: list[Any]) -> None:
    """Steering attribution (:func:`circuits.steering.steering_attribution`: one forward
    with dual numbers and one forward and backward, over 21 strengths as rows of one batch)
    per strength point, against one forward of the same one-row prompt."""
    from circuits.steering import steering_attribution

    n_points = 21
    v = x.vectors[0]
    norm = float(v.norm())  # resid-norm units with this norm: strength 4 adds 4·v
    steering = [tc for tc in tcs if tc.layer > x.layer]
    one = x.single.to(b.s.device)
    b.time(
        "steering",
        STEER_ROW,
        "bridge",
        "point",
        lambda: steering_attribution(
            model, steering, one, v, layer=x.layer, strength=4.0, resid_norm=norm, n_points=n_points
        ),
        n_points,
        ref=True,
        how=f"median of {b.s.repeats} calls; {len(steering)} transcoders after the injection "
        f"layer, {one.length} tokens",
    )

    def forward() -> Any:
        with torch.no_grad():
            return model(one.input_ids)

    b.time(
        "steering",
        STEER_BASE,
        "bridge",
        "point",
        forward,
        1,
        how=f"median of {b.s.repeats} calls of one row",
    )
