"""Train small transcoders on a model's MLP activations, and the organism's transcoders.

The trainer is BatchTopK (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders"; TopK:
Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), with an affine skip
(Paulo et al. 2025, "Transcoders beat sparse autoencoders for interpretability"):

* activations are scaled to unit mean square (the scales are folded into the weights at the
  end, exactly);
* the skip ``A`` and ``b_dec`` start at the least-squares linear fit of the MLP, so the
  features start on what no linear map explains;
* each step keeps the ``k × batch`` largest ReLU pre-activations of the whole batch (on
  average ``k`` per token), decodes them, and minimises the squared error divided by the
  variance of the target (the batch's FVU); decoder rows are kept at unit norm;
* AuxK: features silent for ``dead_steps`` steps reconstruct the residual error through
  their own top ``aux_k``, so they come back to life;
* the smallest kept activation is tracked (an exponential average); at the end it becomes
  the JumpReLU threshold θ of every feature: the saved transcoder is a sae-lens
  ``jumprelu_skip_transcoder`` (sae-lens 6.54 has no TopK transcoder; it turns its own
  BatchTopK SAEs into JumpReLU the same way), and every reported number is measured on that
  saved form, on held-out prompts.

``python -m mechintro.transcoders train-organism`` reproduces the shipped transcoders of
``builtin:organism`` (seeded; about four minutes on one CPU thread) and writes ``fvu.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.transcoders.core import ORGANISM_DIR, Transcoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained transcoder (recorded in its config)."""

    d_sae: int = 2048  # number of features
    k: int = 32  # mean active features per token (BatchTopK)
    steps: int = 3000
    batch_size: int = 1024  # tokens per step
    lr: float = 2e-3  # Adam, linear warm-up then cosine decay to 10%
    warmup: int = 100
    skip: bool = True  # learn an affine skip A (initialised by least squares)
    aux_k: int = 128  # AuxK: top dead features used on the residual
    aux_coef: float = 1 / 32
    dead_steps: int = 200  # silent this many steps: dead
    threshold_decay: float = 0.99  # EMA of the smallest kept activation -> θ
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae ({self.d_sae}), got {self.k}")
        for name in ("d_sae", "steps", "batch_size", "aux_k", "dead_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainReport:
    """What training measured: FVU, L0 and dead fraction of the saved (JumpReLU) transcoder
    on the held-out activations, the linear skip's FVU alone, and the time it took."""

    layer: int
    fvu: float
    l0: float
    dead: float
    fvu_linear: float
    n_train: int
    n_heldout: int
    seconds: float
    final_loss: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Model(torch.nn.Module):
    def __init__(self, d_in: int, d_out: int, cfg: TrainConfig, g: torch.Generator) -> None:
        super().__init__()
        W = torch.randn(cfg.d_sae, d_out, generator=g)
        W = W / W.norm(dim=1, keepdim=True)
        enc = torch.randn(d_in, cfg.d_sae, generator=g)
        self.W_dec = torch.nn.Parameter(W)
        self.W_enc = torch.nn.Parameter(enc / enc.norm(dim=0, keepdim=True))
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_out))
        self.skip = torch.nn.Parameter(torch.zeros(d_in, d_out), requires_grad=cfg.skip)

    def linear(self, x: Tensor) -> Tensor:
        return x @ self.skip + self.b_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8))


def _adam(m: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    params = [p for p in m.parameters() if p.requires_grad]
    try:  # the fused kernel is ~4x faster on a CPU
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch or device
        return torch.optim.Adam(params, lr=lr)


def _least_squares(x: Tensor, y: Tensor, ridge: float = 1e-3) -> tuple[Tensor, Tensor]:
    """``A, b`` minimising ``‖x·A + b − y‖²`` (+ a small ridge), in float64."""
    xm, ym = x.double().mean(0), y.double().mean(0)
    xc, yc = x.double() - xm, y.double() - ym
    gram = xc.T @ xc
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    A = torch.linalg.solve(gram, xc.T @ yc)
    return A.float(), (ym - xm @ A).float()


def _fvu(y: Tensor, y_hat: Tensor) -> float:
    y64 = y.double()
    return float((y64 - y_hat.double()).pow(2).sum() / (y64 - y64.mean(0)).pow(2).sum())


def _forward(m: _Model, x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """BatchTopK: keep the ``k × rows`` largest ReLU pre-activations of the whole batch and
    decode them with ``embedding_bag`` (only the kept rows of ``W_dec`` are touched).
    Returns the reconstruction, the pre-activations and the kept flat indices."""
    pre = torch.relu(x @ m.W_enc + m.b_enc)
    d_sae = pre.shape[1]
    kept = torch.topk(pre.detach().flatten(), k * x.shape[0], sorted=False).indices.sort().values
    kept = kept[pre.detach().flatten()[kept] > 0]
    rows = kept // d_sae
    counts = torch.bincount(rows, minlength=x.shape[0])
    y = torch.nn.functional.embedding_bag(
        kept % d_sae,
        m.W_dec,
        counts.cumsum(0) - counts,
        mode="sum",
        per_sample_weights=pre.flatten()[kept],
    )
    return y + m.linear(x), pre, kept


def train_transcoder(
    x: Float[Tensor, "n d_in"],
    y: Float[Tensor, "n d_out"],
    cfg: TrainConfig = TrainConfig(),
    *,
    layer: int,
    heldout: tuple[Tensor, Tensor] | None = None,
    info: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Transcoder, TrainReport]:
    """Train a BatchTopK transcoder mapping MLP inputs ``x`` to MLP outputs ``y`` (rows are
    tokens, e.g. from :func:`~mechintro.transcoders.sites.mlp_activations`), and return it
    as a JumpReLU :class:`Transcoder` with its report (measured on ``heldout`` = (x, y),
    default a seeded random 10% of the rows, which are then not trained on).

    Example::

        acts = mlp_activations(model, prompts, layers=[4])
        tc, report = train_transcoder(acts.x[4], acts.y[4], TrainConfig(steps=2000), layer=4)
        tc.save("out/layer_4")
    """
    t0 = time.perf_counter()
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must be [n, d] with the same n, got {x.shape} and {y.shape}")
    if heldout is None:
        n_hold = max(1, x.shape[0] // 10)
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
        hold, keep = perm[:n_hold], perm[n_hold:]
        heldout, x, y = (x[hold], y[hold]), x[keep], y[keep]
    if x.shape[0] < cfg.batch_size:
        raise ValueError(
            f"{x.shape[0]} training rows but batch_size={cfg.batch_size}: collect more "
            "activations or lower batch_size"
        )
    dev = torch.device(device)
    g = torch.Generator().manual_seed(cfg.seed)
    x, y = x.float(), y.float()
    s_in = float(x.pow(2).mean().sqrt())
    s_out = float((y - y.mean(0)).pow(2).mean().sqrt())
    xs, ys = (x / s_in).to(dev), (y / s_out).to(dev)
    var = float((ys - ys.mean(0)).pow(2).sum(-1).mean())  # per-token variance of the target

    m = _Model(x.shape[1], y.shape[1], cfg, g).to(dev)
    with torch.no_grad():
        fit = torch.randperm(xs.shape[0], generator=g)[:50_000]
        if cfg.skip:
            A, b = _least_squares(xs[fit].cpu(), ys[fit].cpu())
            m.skip.copy_(A)
            m.b_dec.copy_(b)
        else:
            m.b_dec.copy_(ys.mean(0))
    opt = _adam(m, cfg.lr)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    last_on = torch.zeros(cfg.d_sae, dtype=torch.long, device=dev)
    theta: float | None = None
    losses: list[float] = []
    n = xs.shape[0]
    order = torch.randperm(n, generator=g)
    at = 0
    for step in range(cfg.steps):
        if at + cfg.batch_size > n:
            order, at = torch.randperm(n, generator=g), 0
        idx = order[at : at + cfg.batch_size].to(dev)
        at += cfg.batch_size
        xb, yb = xs[idx], ys[idx]
        y_hat, pre, kept = _forward(m, xb, cfg.k)
        loss = (y_hat - yb).pow(2).sum(-1).mean() / var
        last_on[kept % cfg.d_sae] = step
        dead = (step - last_on) >= cfg.dead_steps
        if bool(dead.any()):
            resid = (yb - y_hat).detach()
            top = torch.topk(pre * dead, min(cfg.aux_k, int(dead.sum())), dim=-1)
            aux = torch.nn.functional.embedding_bag(
                top.indices, m.W_dec, mode="sum", per_sample_weights=top.values
            )
            aux_var = (resid - resid.mean(0)).pow(2).sum(-1).mean().clamp(min=1e-8)
            loss = loss + cfg.aux_coef * (aux - resid).pow(2).sum(-1).mean() / aux_var
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        m.normalise_decoder()
        with torch.no_grad():
            smallest = float(pre.flatten()[kept].min()) if kept.numel() else 0.0
        theta = smallest if theta is None else (
            cfg.threshold_decay * theta + (1 - cfg.threshold_decay) * smallest
        )  # fmt: skip
        losses.append(loss.item())
        if step % 500 == 0 or step == cfg.steps - 1:
            logger.info("layer %d step %d: loss %.4f, dead %d, θ %.3f", layer, step,
                        sum(losses[-50:]) / len(losses[-50:]), int(dead.sum()), theta)  # fmt: skip

    with torch.no_grad():
        tc = Transcoder(
            layer=layer,
            W_enc=(m.W_enc / s_in).detach().cpu().clone(),
            b_enc=m.b_enc.detach().cpu().clone(),
            W_dec=(m.W_dec * s_out).detach().cpu().clone(),
            b_dec=(m.b_dec * s_out).detach().cpu().clone(),
            threshold=torch.full((cfg.d_sae,), float(theta or 0.0)),
            skip=(m.skip * (s_out / s_in)).detach().cpu().clone() if cfg.skip else None,
            info={
                "trainer": "mechintro.transcoders.train (BatchTopK -> JumpReLU)",
                "train_config": cfg.to_dict(),
                **(info or {}),
            },
        )
        from mechintro.transcoders.analysis import reconstruction

        hx, hy = heldout
        res = reconstruction(tc, hx.float(), hy.float())
        A, b = _least_squares(x, y)
        fvu_lin = _fvu(hy.float(), hx.float() @ A + b)
    report = TrainReport(
        layer=layer,
        fvu=float(res.fvu[0]),
        l0=float(res.l0[0]),
        dead=float(res.dead[0]),
        fvu_linear=fvu_lin,
        n_train=int(x.shape[0]),
        n_heldout=int(hx.shape[0]),
        seconds=time.perf_counter() - t0,
        final_loss=sum(losses[-50:]) / max(1, len(losses[-50:])),
        config=cfg.to_dict(),
    )
    tc.info["heldout"] = {
        "fvu": report.fvu,
        "l0": report.l0,
        "dead": report.dead,
        "fvu_linear": report.fvu_linear,
        "n_tokens": report.n_heldout,
    }
    return tc, report


# ---------------------------------------------------------------------------------------------
# the organism's transcoders


@dataclass(frozen=True)
class OrganismData:
    """How the organism's activations are collected (recorded with the transcoders)."""

    n_plain: int = 3000  # phase-1 dialogues (facts, controls, "No" trials), with their replies
    n_steered: int = 3000  # phase-2 dialogues: injected trials (train and pseudo concepts) ...
    strengths: tuple[float, float] = (0.25, 3.0)  # resid-norm units, uniform
    negative: float = 0.2  # the fraction of injections with the vector's sign flipped
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def organism_prompts(data: OrganismData, model: Any) -> list[tuple[Any, str | None, str, float]]:
    """``(prompt, injected concept or None, mode, signed strength)`` per dialogue.

    Phase-1 and phase-2 dialogues of :mod:`mechintro.organism.corpus` (new seeds), each
    prompt followed by its reply as an assistant prefill, except single-token injections,
    whose steered token is the last of the prompt (the reply is left out there).
    """
    from dataclasses import replace

    from mechintro.models import tokenizer_of
    from mechintro.organism import corpus
    from mechintro.organism.train import pseudo_words

    cs = corpus.concepts(0)
    rng = random.Random(data.seed)
    pseudo = pseudo_words(tokenizer_of(model), cs)
    ex = corpus.phase1_examples(cs, data.n_plain, 10_000 + data.seed)
    ex += corpus.phase2_examples(cs, data.n_steered, 20_000 + data.seed, pseudo=pseudo)
    out: list[tuple[Any, str | None, str, float]] = []
    for e in ex:
        s = rng.uniform(*data.strengths) * (-1 if rng.random() < data.negative else 1)
        if e.inject is not None and e.mode == "single-token":
            out.append((e.prompt, e.inject, "single-token", s))
            continue
        prompt = replace(e.prompt, prefill=(e.prompt.prefill + " " + e.reply).strip())
        out.append((prompt, e.inject, "from-trial", s if e.inject else 0.0))
    return out


def _length(prompt: Any) -> int:
    """A prompt's length in characters (a proxy for its token count, to batch alike ones)."""
    return sum(len(m.content) for m in prompt.messages) + len(prompt.prefill or "")


def organism_activations(
    model: Any, layers: Sequence[int], data: OrganismData, batch_size: int = 128
) -> Any:
    """MLP activations of ``builtin:organism`` on :func:`organism_prompts`, concept vectors
    injected (Lindsey vectors of the base organism, ``resid-norm`` units, from the token
    before ``Trial n`` or at the last prompt token) as in the organism's own training."""
    from mechintro.inject import Injection
    from mechintro.models import builtin_path
    from mechintro.organism import corpus
    from mechintro.organism.train import concept_vectors
    from mechintro.transcoders.sites import MLPActivations, mlp_activations

    cfg = json.loads((builtin_path("organism") / "training.json").read_text())
    inj_layer = int(cfg["config"]["layer"])
    rows = organism_prompts(data, model)
    words = sorted({w for _, w, _, _ in rows if w})
    cs = corpus.concepts(0)
    vec, resid = concept_vectors(builtin_path("organism-base"), words,
                                 corpus.split(cs, "baseline"), inj_layer, "cpu")  # fmt: skip
    groups: dict[str, list[int]] = {"none": [], "from-trial": [], "single-token": []}
    for i, (_, w, mode, _) in enumerate(rows):
        groups["none" if w is None else mode].append(i)
    parts = []
    for mode, idx in groups.items():
        if not idx:
            continue
        idx.sort(key=lambda i: _length(rows[i][0]))  # less padding per batch
        prompts = [rows[i][0] for i in idx]
        inj = None
        if mode != "none":
            V = torch.stack([vec[str(rows[i][1])] for i in idx])
            inj = Injection(inj_layer, V, [rows[i][3] for i in idx], mode=mode,
                            unit="resid-norm", resid_norm=resid)  # fmt: skip
        parts.append(mlp_activations(model, prompts, layers, injection=inj, batch_size=batch_size))
    return MLPActivations(
        x={x: torch.cat([p.x[x] for p in parts]) for x in layers},
        y={x: torch.cat([p.y[x] for p in parts]) for x in layers},
        prompt=torch.cat([p.prompt for p in parts]),
        position=torch.cat([p.position for p in parts]),
        token=torch.cat([p.token for p in parts]),
    )


ORGANISM_CONFIG = TrainConfig(d_sae=2048, k=32, steps=1000, batch_size=512, dead_steps=100)
ORGANISM_DATA = OrganismData(n_plain=1500, n_steered=1500, seed=0)
ORGANISM_HELDOUT = OrganismData(n_plain=250, n_steered=250, seed=1)


def train_organism(
    out: str | os.PathLike[str] = ORGANISM_DIR,
    *,
    layers: Sequence[int] = (3, 4, 5),
    cfg: TrainConfig = ORGANISM_CONFIG,
    data: OrganismData = ORGANISM_DATA,
    heldout: OrganismData = ORGANISM_HELDOUT,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train the transcoders of ``builtin:organism`` (blocks ``layers``; the injection layer
    is 3) into ``out/layer_L`` (sae-lens format, fp16 storage) and write ``out/fvu.json``.

    Activations come from :func:`organism_activations` on the HookedTransformer backend
    (the same sites as the bridge, tested, and faster on a CPU); FVUs are measured on
    held-out dialogues of other seeds. ``threads`` sets torch's CPU threads (``None``: as
    is). Seeded: the same call with the same thread count gives bit-identical files.

    Example::

        python -m mechintro.transcoders train-organism --out /tmp/organism-transcoders
    """
    from mechintro.io import atomic_write_text
    from mechintro.models import fingerprint, load_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    model = load_model("builtin:organism", backend="hooked")
    layers = sorted(layers)
    train = organism_activations(model, layers, data)
    hold = organism_activations(model, layers, heldout)
    t_data = time.perf_counter() - t0
    logger.info("activations: %d train / %d held-out tokens in %.0f s", len(train), len(hold),
                t_data)  # fmt: skip
    out = Path(out)
    report: dict[str, Any] = {
        "model": "builtin:organism",
        "model_fingerprint": fingerprint(model),
        "config": cfg.to_dict(),
        "data": data.to_dict(),
        "heldout_data": heldout.to_dict(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds_activations": round(t_data, 1),
        "layers": {},
    }
    for layer in layers:
        info = {"model": "builtin:organism", "model_fingerprint": report["model_fingerprint"],
                "data": data.to_dict()}  # fmt: skip
        tc, rep = train_transcoder(train.x[layer], train.y[layer], cfg, layer=layer,
                                   heldout=(hold.x[layer], hold.y[layer]), info=info)  # fmt: skip
        tc.save(out / f"layer_{layer}", dtype=torch.float16)
        row = {k: v for k, v in rep.to_dict().items() if k not in ("config", "layer")}
        report["layers"][str(layer)] = row
        logger.info("layer %d: held-out FVU %.4f (linear skip alone %.4f), L0 %.1f, %.0f s",
                    layer, rep.fvu, rep.fvu_linear, rep.l0, rep.seconds)  # fmt: skip
    report["seconds_total"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / "fvu.json", json.dumps(report, indent=1))
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mechintro.transcoders train-organism [--out DIR] [--layers 3 4 5]``."""
    p = argparse.ArgumentParser(
        prog="python -m mechintro.transcoders",
        description="Train transcoders (BatchTopK, saved as sae-lens JumpReLU transcoders).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train-organism", help="train the transcoders of builtin:organism")
    t.add_argument("--out", default=str(ORGANISM_DIR), help="folder for layer_L/ and fvu.json")
    t.add_argument("--layers", type=int, nargs="+", default=[3, 4, 5])
    t.add_argument("--steps", type=int, default=ORGANISM_CONFIG.steps)
    t.add_argument("--d-sae", type=int, default=ORGANISM_CONFIG.d_sae)
    t.add_argument("--k", type=int, default=ORGANISM_CONFIG.k)
    t.add_argument("--seed", type=int, default=ORGANISM_CONFIG.seed)
    t.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (on a shared 2-core machine one thread was 4x faster "
                   "than two for these small matrices; the shipped weights used 1)")  # fmt: skip
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from dataclasses import replace

    cfg = replace(ORGANISM_CONFIG, steps=a.steps, d_sae=a.d_sae, k=a.k, seed=a.seed)
    report = train_organism(a.out, layers=a.layers, cfg=cfg, threads=a.threads)
    rows = {k: round(v["fvu"], 4) for k, v in report["layers"].items()}
    logger.info("held-out FVU by layer: %s; %.0f s in all", rows, report["seconds_total"])
