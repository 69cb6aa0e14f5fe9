"""The transcoder as a value: weights, encode/decode, and sae-lens's disk and registry formats.

A :class:`Transcoder` holds plain tensors and does the arithmetic itself; sae-lens is used
only to find, download, read and write weights (its release registry, ``SAE.from_pretrained``,
``SAE.load_from_disk``, its ``cfg.json`` + ``sae_weights.safetensors`` layout). The sae-lens
architectures it reads and writes:

========================== ============================== ===========================
sae-lens architecture      activation                     affine skip
========================== ============================== ===========================
``transcoder``             ``ReLU(pre)``                  no
``skip_transcoder``        ``ReLU(pre)``                  ``W_skip`` (stored [d_out, d_in])
``jumprelu_transcoder``    ``1[pre > θ]·ReLU(pre)``       no
``jumprelu_skip_transcoder`` ``1[pre > θ]·ReLU(pre)``     ``W_skip`` (stored [d_out, d_in])
========================== ============================== ===========================

with ``pre = x·W_enc + b_enc`` and output ``a·W_dec + b_dec (+ x·A)``. sae-lens stores the
skip matrix as ``W_skip = Aᵀ`` (``[d_out, d_in]``, applied as ``x @ W_skip.T``); here it is
:attr:`Transcoder.skip` ``= A`` (``[d_in, d_out]``), so that every term reads left to right.
sae-lens 6.54 has no TopK transcoder; :mod:`mechintro.analysis.transcoders.train` trains with
BatchTopK and ships the result as JumpReLU (one threshold), as sae-lens does for BatchTopK SAEs.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.models import hook_name

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sae_lens import SAE

logger = logging.getLogger(__name__)

ARCHITECTURES: dict[str, tuple[bool, bool]] = {
    "transcoder": (False, False),
    "skip_transcoder": (False, True),
    "jumprelu_transcoder": (True, False),
    "jumprelu_skip_transcoder": (True, True),
}
"""sae-lens architecture -> (JumpReLU threshold?, affine skip?)."""

CFG_FILE = "cfg.json"  # sae_lens.constants.SAE_CFG_FILENAME
WEIGHTS_FILE = "sae_weights.safetensors"  # sae_lens.constants.SAE_WEIGHTS_FILENAME
ORGANISM_DIR = Path(__file__).resolve().parents[2] / "organism" / "transcoders"


@dataclass(eq=False)
class Transcoder:
    """One transcoder for block ``layer``'s MLP: reads the MLP input, writes its output.

    ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``,
    ``threshold [d_sae]`` (JumpReLU; ``None``: plain ReLU), ``skip [d_in, d_out]`` (the affine
    skip ``A``; ``None``: none). ``info`` records where it came from (release, id, folder,
    sae-lens's hook names, training numbers). Shapes are checked on construction.

    Example::

        tc = load_transcoder("mechintro/organism/transcoders/layer_4")
        acts = tc.encode(x)              # [..., d_sae], mostly zeros
        y_hat = tc(x)                    # decode(encode(x)) + x @ skip
    """

    layer: int
    W_enc: Float[Tensor, "d_in d_sae"]
    b_enc: Float[Tensor, " d_sae"]
    W_dec: Float[Tensor, "d_sae d_out"]
    b_dec: Float[Tensor, " d_out"]
    threshold: Float[Tensor, " d_sae"] | None = None
    skip: Float[Tensor, "d_in d_out"] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise TypeError(f"layer must be a block index (int >= 0), got {self.layer!r}")
        if self.W_enc.ndim != 2 or self.W_dec.ndim != 2:
            raise ValueError(
                f"W_enc and W_dec must be matrices, got {tuple(self.W_enc.shape)} and "
                f"{tuple(self.W_dec.shape)}"
            )
        d_in, d_sae = self.W_enc.shape
        d_out = self.W_dec.shape[1]
        want: dict[str, tuple[Tensor | None, tuple[int, ...]]] = {
            "W_dec": (self.W_dec, (d_sae, d_out)),
            "b_enc": (self.b_enc, (d_sae,)),
            "b_dec": (self.b_dec, (d_out,)),
            "threshold": (self.threshold, (d_sae,)),
            "skip": (self.skip, (d_in, d_out)),
        }
        for name, (t, shape) in want.items():
            if t is not None and tuple(t.shape) != shape:
                hint = " (sae-lens's W_skip is [d_out, d_in]: pass its transpose)" * (
                    name == "skip"
                )
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)}, expected {shape} for W_enc "
                    f"{tuple(self.W_enc.shape)}{hint}"
                )

    # -- shapes and naming -----------------------------------------------------------------

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def architecture(self) -> str:
        """The sae-lens architecture name these weights are saved under."""
        jump, skip = self.threshold is not None, self.skip is not None
        return next(k for k, v in ARCHITECTURES.items() if v == (jump, skip))

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def __repr__(self) -> str:
        src = self.info.get("source", "")
        return (
            f"Transcoder(layer={self.layer}, {self.d_in}->{self.d_sae}->{self.d_out}, "
            f"{self.architecture}, {str(self.dtype).removeprefix('torch.')}"
            f"{', ' + repr(src) if src else ''})"
        )

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Transcoder:
        """A copy on ``device`` / in ``dtype`` (the original is untouched)."""

        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(
            self,
            W_enc=self.W_enc.to(device=device, dtype=dtype),
            b_enc=self.b_enc.to(device=device, dtype=dtype),
            W_dec=self.W_dec.to(device=device, dtype=dtype),
            b_dec=self.b_dec.to(device=device, dtype=dtype),
            threshold=mv(self.threshold),
            skip=mv(self.skip),
            info=dict(self.info),
        )

    # -- the arithmetic ----------------------------------------------------------------------

    def _check_width(self, x: Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"the transcoder reads vectors of width {self.d_in}, got {x.shape[-1]}: it "
                "belongs to another model (or another site); load the transcoder trained "
                "for this model's d_model"
            )

    def pre_acts(self, x: Float[Tensor, "*rows d_in"]) -> Float[Tensor, "*rows d_sae"]:
        """``x·W_enc + b_enc`` (in the transcoder's dtype)."""
        self._check_width(x)
        return x.to(self.dtype) @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "*rows d_sae"]) -> Float[Tensor, "*rows d_sae"]:
        """JumpReLU ``1[pre > θ]·ReLU(pre)``, or ReLU without a threshold."""
        a = torch.relu(pre)
        if self.threshold is not None:
            a = a * (pre > self.threshold).to(a.dtype)
        return a

    def encode(self, x: Float[Tensor, "*rows d_in"]) -> Float[Tensor, "*rows d_sae"]:
        """Feature activations of MLP inputs ``x``."""
        return self.activate(self.pre_acts(x))

    def decode(self, acts: Float[Tensor, "*rows d_sae"]) -> Float[Tensor, "*rows d_out"]:
        """``acts·W_dec + b_dec`` (without the skip term, which needs ``x``)."""
        return acts.to(self.dtype) @ self.W_dec + self.b_dec

    def skip_term(self, x: Float[Tensor, "*rows d_in"]) -> Float[Tensor, "*rows d_out"]:
        """``x·A`` (zeros without an affine skip)."""
        if self.skip is None:
            return torch.zeros(
                (*x.shape[:-1], self.d_out), dtype=self.dtype, device=self.W_enc.device
            )
        return x.to(self.dtype) @ self.skip

    def __call__(self, x: Float[Tensor, "*rows d_in"]) -> Float[Tensor, "*rows d_out"]:
        """The reconstruction of the MLP's output: ``decode(encode(x)) + x·A``."""
        out = self.decode(self.encode(x))
        return out if self.skip is None else out + x.to(self.dtype) @ self.skip

    # -- sae-lens ----------------------------------------------------------------------------

    @classmethod
    def from_sae(
        cls, sae: Any, *, layer: int | None = None, info: dict[str, Any] | None = None
    ) -> Transcoder:
        """Our transcoder from a loaded sae-lens transcoder (any of :data:`ARCHITECTURES`).

        ``layer`` defaults to the block index in the sae-lens hook names (``blocks.L.``) or
        Hugging Face hook names (``layers.L.``).
        """
        cfg = sae.cfg
        arch = str(cfg.architecture())
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"sae-lens architecture {arch!r} is not a transcoder mechintro can apply "
                f"(supported: {', '.join(ARCHITECTURES)}); an SAE reconstructs one site, a "
                "transcoder maps the MLP input to the MLP output: load a transcoder release"
            )
        for opt, ok in (("normalize_activations", "none"), ("reshape_activations", "none")):
            if getattr(cfg, opt, ok) != ok:
                raise ValueError(
                    f"this transcoder has {opt}={getattr(cfg, opt)!r}; mechintro applies raw "
                    f"weights only: fold it first (sae.fold_activation_norm_scaling_factor) "
                    f"or set {opt}='none' if the weights already include it"
                )
        meta = {k: v for k, v in cfg.metadata.to_dict().items() if v is not None}
        ours = meta.pop("mechintro", None) or {}  # what Transcoder.save recorded
        if layer is None:
            layer = _layer_from_names(meta)
        jump, has_skip = ARCHITECTURES[arch]

        def get(name: str) -> Tensor:
            return getattr(sae, name).detach().clone()

        out = cls(
            layer=layer,
            W_enc=get("W_enc"),
            b_enc=get("b_enc"),
            W_dec=get("W_dec"),
            b_dec=get("b_dec"),
            threshold=get("threshold") if jump else None,
            skip=get("W_skip").T.contiguous() if has_skip else None,
            info={**ours, "sae_lens": meta, **(info or {})},
        )
        _warn_if_other_site(meta)
        return out

    def sae_config(self) -> dict[str, Any]:
        """The sae-lens config dict (``cfg.json``) of these weights, built by sae-lens."""
        from sae_lens.registry import get_sae_class

        meta = {
            "hook_name": hook_name(self.layer, "mlp.hook_in"),
            "hook_name_out": hook_name(self.layer, "mlp_out"),
            **{k: v for k, v in self.info.get("sae_lens", {}).items()},
            "mechintro": {k: v for k, v in self.info.items() if k != "sae_lens"},
        }
        cfg_cls = get_sae_class(self.architecture)[1]
        cfg = cfg_cls.from_dict(
            {
                "architecture": self.architecture,
                "d_in": self.d_in,
                "d_sae": self.d_sae,
                "d_out": self.d_out,
                "dtype": "float32",
                "device": "cpu",
                "apply_b_dec_to_input": False,
                "normalize_activations": "none",
                "reshape_activations": "none",
                "metadata": meta,
            }
        )
        return dict(cfg.to_dict())

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors under sae-lens's names (``W_skip`` transposed to its ``[d_out, d_in]``)."""
        sd = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            sd["threshold"] = self.threshold
        if self.skip is not None:
            sd["W_skip"] = self.skip.T
        return {k: v.detach().contiguous().cpu() for k, v in sd.items()}

    def to_sae(self) -> SAE[Any]:
        """The same weights as a sae-lens ``Transcoder`` module (fp32, CPU)."""
        from sae_lens import SAE

        sae = SAE.from_dict(self.sae_config())
        sae.load_state_dict({k: v.float() for k, v in self.state_dict().items()})
        return sae

    def save(self, folder: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> Path:
        """Write ``cfg.json`` + ``sae_weights.safetensors`` in sae-lens's layout.

        ``dtype`` is the storage dtype of the tensors; the config always says ``float32``, so
        ``SAE.load_from_disk`` (which casts to the config's dtype) and :func:`load_transcoder`
        give fp32 weights either way: fp16 storage halves the files, nothing else.
        """
        from safetensors.torch import save_file

        from mechintro.io import atomic_write, atomic_write_text

        folder = Path(folder)
        sd = {k: v.to(dtype) for k, v in self.state_dict().items()}
        atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(sd, p))
        text = json.dumps(self.sae_config(), indent=1, default=str)
        atomic_write_text(folder / CFG_FILE, text)
        return folder


def _layer_from_names(meta: dict[str, Any]) -> int:
    for key in ("hook_name", "hook_name_out", "hf_hook_name", "hf_hook_name_out"):
        m = re.search(r"(?:blocks|layers)\.(\d+)\.", str(meta.get(key, "")))
        if m:
            return int(m.group(1))
    raise ValueError(
        "cannot tell which block this transcoder belongs to (its config names no "
        "'blocks.L.' hook): pass layer=L"
    )


_MLP_INPUT_HF = ("pre_feedforward_layernorm.output", "post_attention_layernorm.output", "mlp")


def _warn_if_other_site(meta: dict[str, Any]) -> None:
    hf = str(meta.get("hf_hook_name") or "")
    if hf and not any(s in hf for s in _MLP_INPUT_HF):
        logger.warning(
            "this transcoder was trained on %s, not on the MLP input; mechintro applies it "
            "at the MLP input (after the pre-MLP norm and its weight)",
            hf,
        )


# ---------------------------------------------------------------------------------------------
# loading


@dataclass(frozen=True)
class RegistryEntry:
    """One transcoder in sae-lens's release registry (``pretrained_saes.yaml``)."""

    release: str
    sae_id: str
    repo_id: str
    path: str
    model: str
    conversion_func: str | None
    l0: float | None


def registry_entry(release: str, sae_id: str) -> RegistryEntry:
    """Look ``release`` / ``sae_id`` up in sae-lens's registry, offline; errors name the fix.

    Example: ``registry_entry("gemma-scope-2-1b-it-transcoders", "transcoder/layer_...")``.
    """
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        near = difflib.get_close_matches(release, list(directory), n=3, cutoff=0.6)
        tc = sorted(r for r in directory if "transcoder" in r)[:6]
        raise ValueError(
            f"no sae-lens release {release!r}"
            + (f"; did you mean {near}?" if near else "")
            + f" Transcoder releases include {tc} (all: sae_lens.loading."
            "pretrained_saes_directory.get_pretrained_saes_directory())"
        )
    entry = directory[release]
    if sae_id not in entry.saes_map:
        ids = list(entry.saes_map)
        near = difflib.get_close_matches(sae_id, ids, n=3, cutoff=0.5)
        raise ValueError(
            f"release {release!r} has no id {sae_id!r}; "
            + (f"did you mean {near}? " if near else "")
            + f"it has {len(ids)} ids, e.g. {ids[:3]}"
        )
    return RegistryEntry(
        release=release,
        sae_id=sae_id,
        repo_id=entry.repo_id,
        path=entry.saes_map[sae_id],
        model=entry.model,
        conversion_func=entry.conversion_func,
        l0=entry.expected_l0.get(sae_id),
    )


def load_transcoder(
    source: str | os.PathLike[str],
    sae_id: str | None = None,
    *,
    layer: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Transcoder:
    """Load a transcoder through sae-lens: a local folder, or a registry release and id.

    * ``load_transcoder(folder)``: ``SAE.load_from_disk`` (``cfg.json`` +
      ``sae_weights.safetensors``), e.g. what :meth:`Transcoder.save` wrote;
    * ``load_transcoder(release, sae_id)``: ``SAE.from_pretrained`` after checking both
      names in the registry (downloads from the Hub once, then from its cache).

    ``layer`` overrides the block read from the config's hook names. The weights are applied
    by mechintro's own code at the true MLP input and output (:mod:`.sites`), never at
    sae-lens's ``hook_name``.

    Example::

        tc = load_transcoder("gemma-scope-2-1b-it-transcoders",
                             "transcoder/layer_13_width_16k_l0_small_affine")
    """
    from sae_lens import SAE

    dt = str(dtype).removeprefix("torch.")
    if sae_id is None:
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} is not a folder; for a sae-lens release give its id too: "
                "load_transcoder(release, sae_id)"
            )
        if not (folder / CFG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(
                f"{folder} lacks {CFG_FILE} or {WEIGHTS_FILE}: it is not a sae-lens folder "
                "(write one with Transcoder.save or sae.save_model)"
            )
        sae = SAE.load_from_disk(str(folder), device="cpu", dtype=dt)
        info: dict[str, Any] = {"source": str(folder)}
    else:
        entry = registry_entry(str(source), sae_id)
        sae = SAE.from_pretrained(entry.release, entry.sae_id, device="cpu", dtype=dt)
        info = {
            "source": f"{entry.release}/{entry.sae_id}",
            "release": entry.release,
            "sae_id": entry.sae_id,
            "repo_id": entry.repo_id,
            "model": entry.model,
        }
    return Transcoder.from_sae(sae, layer=layer, info=info).to(device=device, dtype=dtype)


TranscoderLike = Any
"""A :class:`Transcoder`, a loaded sae-lens transcoder, a ``(release, sae_id)`` pair of
sae-lens's registry or a sae-lens folder: see :func:`as_transcoder`."""


def is_registry_pair(item: Any) -> bool:
    """Whether ``item`` is a ``(release, sae_id)`` tuple of sae-lens's registry."""
    return isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item)


def as_transcoder(item: TranscoderLike, *, layer: int | None = None) -> Transcoder:
    """``item`` as a :class:`Transcoder`: itself; a sae-lens ``SAE`` of a transcoder
    architecture (:meth:`Transcoder.from_sae`); a ``(release, sae_id)`` tuple or a folder
    (:func:`load_transcoder`). ``layer`` overrides the block the config names, as there.
    TypeError naming the accepted forms otherwise.

    Example: ``as_transcoder(("gemma-scope-2-1b-it-transcoders", "transcoder/layer_..."))``.
    """
    if isinstance(item, Transcoder):
        if layer is not None and layer != item.layer:
            raise ValueError(f"the transcoder is block {item.layer}'s, not block {layer}'s")
        return item
    if type(item).__module__.split(".")[0] == "sae_lens":
        return Transcoder.from_sae(item, layer=layer)
    if is_registry_pair(item):
        return load_transcoder(item[0], item[1], layer=layer)
    if isinstance(item, (str, os.PathLike)):
        return load_transcoder(item, layer=layer)
    raise TypeError(
        f"expected a transcoder, got {type(item).__name__}: give a mechintro Transcoder, a "
        "sae-lens SAE of a transcoder architecture (SAE.from_pretrained(release, sae_id)), a "
        "(release, sae_id) tuple of sae-lens's registry, or a sae-lens folder"
    )


def organism_transcoders(
    layers: list[int] | tuple[int, ...] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[int, Transcoder]:
    """The transcoders trained on ``builtin:organism`` (shipped under
    ``mechintro/organism/transcoders/layer_L``), by layer.

    Example::

        tcs = organism_transcoders()  # {3: Transcoder, 4: ..., 5: ...}
    """
    how = "reinstall mechintro, or train them with mechintro organism transcoders"
    return transcoders_in(ORGANISM_DIR, layers, how, device=device, dtype=dtype)


def transcoders_in(
    folder: str | Path,
    layers: Sequence[int] | None,
    how: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[int, Transcoder]:
    """The transcoders saved under ``folder/layer_L`` (each with its config file), by layer:
    ``layers`` (default all found). ``how``: how to get them, for the error when none is
    there."""
    folder = Path(folder)
    found = {
        int(p.name.removeprefix("layer_")): p
        for p in sorted(folder.glob("layer_*"))
        if (p / CFG_FILE).is_file()
    }
    if not found:
        raise FileNotFoundError(f"no transcoders under {folder}: {how}")
    want = sorted(found) if layers is None else list(layers)
    missing = [x for x in want if x not in found]
    if missing:
        raise ValueError(f"no transcoder for layers {missing} under {folder}: {sorted(found)}")
    return {x: load_transcoder(found[x], device=device, dtype=dtype) for x in want}
