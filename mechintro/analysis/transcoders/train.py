"""Train small transcoders on a model's MLP activations.

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

The built-in organism's shipped transcoders are trained with it by
:mod:`mechintro.organism.transcoder_training`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.analysis.transcoders.configs import TrainConfig
from mechintro.analysis.transcoders.core import Transcoder

logger = logging.getLogger(__name__)


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
    cfg: TrainConfig = TrainConfig(),  # noqa: B008  (frozen: one shared default is safe)
    *,
    layer: int,
    heldout: tuple[Tensor, Tensor] | None = None,
    info: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Transcoder, TrainReport]:
    """Train a BatchTopK transcoder mapping MLP inputs ``x`` to MLP outputs ``y`` (rows are
    tokens, e.g. from :func:`~mechintro.analysis.transcoders.sites.mlp_activations`), and return it
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
        theta = (
            smallest
            if theta is None
            else (cfg.threshold_decay * theta + (1 - cfg.threshold_decay) * smallest)
        )
        losses.append(loss.item())
        if step % 500 == 0 or step == cfg.steps - 1:
            logger.info(
                "layer %d step %d: loss %.4f, dead %d, θ %.3f",
                layer,
                step,
                sum(losses[-50:]) / len(losses[-50:]),
                int(dead.sum()),
                theta,
            )

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
                "trainer": "mechintro.analysis.transcoders.train (BatchTopK -> JumpReLU)",
                "train_config": cfg.to_dict(),
                **(info or {}),
            },
        )
        from mechintro.analysis.transcoders.analysis import reconstruction

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
