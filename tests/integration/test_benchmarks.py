"""The GPU benchmark harness (benchmarks/), run on the CPU with a tiny shape so it cannot rot.

Nothing here asserts a timing: only that every row is produced, measured without error, and
that its ratio to the group's reference is a finite positive number.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: benchmarks/

from benchmarks import cpu, run, scale, suites
from benchmarks.shapes import (
    SHAPES,
    Hardware,
    build_model,
    build_tokenizer,
    decode_weight_bytes,
    param_count,
    roofline_seconds,
    weight_bytes,
)
from benchmarks.table import Row, add_ratios, markdown

BATCH = 4
SMALL = [
    "--device",
    "cpu",
    "--batch",
    str(BATCH),
    "--new-tokens",
    "3",
    "--repeats",
    "1",
    "--warmup",
    "0",
    "--per-trial",
    "1",
    "--sweep-batches",
    "1",
    "--patch-tokens",
    "8",
    "--patch-batch",
    "8",
    "--tl-cells",
    "2",
    "--concepts",
    "6",
    "--per-concept",
    "1",
]


def expected(backends: tuple[str, ...] = ("hf", "hooked", "bridge")) -> set[tuple[str, str, str]]:
    """(group, row, backend) of every row the harness must produce for one shape."""
    rows = {
        ("detection", "per-trial HF generate + hook", "hf"),
        ("detection", f"batched HF generate + hook, batch {BATCH}", "hf"),
        ("detection", f"roofline, batch {BATCH}", "-"),
        ("forward", "plain HF forward", "hf"),
        ("forward", "plain HF forward, eager attention", "hf"),  # the bridge's (sdpa above)
        ("forward", "HF forward + hand-written hook", "hf"),
        ("vectors", "plain HF forward of the same prompts", "hf"),
        ("patch resid_pre", "plain HF forward, same tokens", "hf"),
        ("patch heads", "plain HF forward, same tokens", "hf"),
        ("patch resid_pre", "plain HF forward, eager attention, same tokens", "hf"),
        ("patch heads", "plain HF forward, eager attention, same tokens", "hf"),
        ("transcoders", "feature cache: bytes stored vs dense (≤ 2%)", "bridge"),
        ("transcoders", "transcoder layers resident on the GPU (≤ 1)", "bridge"),
        ("steering", "steering attribution, 21 strengths, per strength point", "bridge"),
        ("steering", "plain forward of the same prompt", "bridge"),
    }
    for b in ("hooked", "bridge"):
        tl = "TransformerBridge" if b == "bridge" else "HookedTransformer"
        rows |= {
            ("forward", f"{tl} forward", b),
            ("forward", f"{tl} forward + mechintro injection", b),
            ("detection", f"per-trial {tl}.generate + hook", b),
            ("detection", f"mechintro generate, batch {BATCH}", b),
            ("detection", f"mechintro run_sweep, batch {BATCH}", b),
            ("patch resid_pre", "mechintro activation_patch", b),
            ("patch resid_pre", "transformer_lens.patching.get_act_patch_resid_pre", b),
            ("patch resid_pre", "plain forward, same tokens", b),
            ("patch heads", "mechintro activation_patch", b),
            ("patch heads", "transformer_lens.patching.get_act_patch_attn_head_out_all_pos", b),
            ("patch heads", "plain forward, same tokens", b),
            ("vectors", "mechintro extract_vectors, 6 concepts", b),
            ("vectors", "per-concept run_with_cache (full cache)", b),
        }
    rows |= {  # the bridge's twin is its reference; the bridge itself, side by side
        ("detection", f"mechintro run_sweep, batch {BATCH}, sampled T=1", "bridge"),
        ("detection", f"mechintro run_sweep, batch {BATCH}, bridge path", "bridge"),
        ("detection", f"mechintro generate, batch {BATCH}, bridge path", "bridge"),
        ("detection", f"mechintro generate, batch {BATCH}, DynamicCache", "bridge"),
        ("detection", f"mechintro generate, batch {BATCH}, static cache, no CUDA graph", "bridge"),
        ("patch resid_pre", "mechintro activation_patch, bridge path", "bridge"),
        ("patch heads", "mechintro activation_patch, bridge path", "bridge"),
        ("vectors", "mechintro extract_vectors, 6 concepts, bridge path", "bridge"),
        ("patch resid_pre", "twin forward, same tokens, timed here", "bridge"),
        ("patch heads", "twin forward, same tokens, timed here", "bridge"),
        ("forward", "twin forward (plain HF, the bridge's weights)", "bridge"),
        ("forward", "twin forward + mechintro injection", "bridge"),
    }
    return rows


SHAPES_RUN = ("tiny", "tiny-gemma3")  # Llama and Gemma-3 layouts (sliding windows, GQA 4:1)


def test_the_gpu_harness_runs_on_the_cpu(tmp_path, capsys):
    assert run.main([*SMALL, "--shapes", ",".join(SHAPES_RUN), "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    for shape in SHAPES_RUN:
        got = {(r["group"], r["name"], r["backend"]) for r in data["rows"] if r["shape"] == shape}
        assert got == expected(), (shape, expected() - got, got - expected())
    rows = [r for r in data["rows"] if r["shape"] == "tiny"]
    bad = [
        (r["name"], r["backend"], r["note"])
        for r in rows
        if r["status"] not in ("ok", "model", "not implemented")
    ]
    assert not bad
    refs = [(r["group"], r["backend"]) for r in rows if r["ref"]]
    assert sorted(refs) == sorted(
        [
            ("detection", "bridge"),
            ("patch resid_pre", "bridge"),
            ("patch heads", "bridge"),
            ("vectors", "bridge"),
            ("forward", "hf"),
            ("transcoders", "bridge"),
            ("steering", "bridge"),
        ]
    )
    by_name = {(r["group"], r["name"], r["backend"]): r for r in rows}
    for name in ("mechintro generate, batch 4", "mechintro generate, batch 4, bridge path"):
        path = by_name[("detection", name, "bridge")]["detail"]["path"]
        assert path == ("bridge" if name.endswith("path") else "twin")
    cache = by_name[("transcoders", "feature cache: bytes stored vs dense (≤ 2%)", "bridge")]
    assert 0 < cache["detail"]["stored_bytes"] < cache["detail"]["dense_bytes"]
    assert cache["bound"] and cache["passed"] is not None
    resident = by_name[("transcoders", "transcoder layers resident on the GPU (≤ 1)", "bridge")]
    assert resident["passed"] is True and resident["detail"]["copies"] == 0  # CPU: none moved
    for r in rows:
        if r["bound"]:  # a verdict on bytes or counts, not on time
            continue
        if r["status"] in ("ok", "model"):
            assert r["seconds"] > 0 and math.isfinite(r["seconds"]), r
            assert r["ratio"] is not None and math.isfinite(r["ratio"]) and r["ratio"] > 0, r
    targets = {(r["group"], r["name"], r["backend"]): r["target"] for r in rows if r["target"]}
    assert targets[("detection", "per-trial HookedTransformer.generate + hook", "hooked")] == 50
    assert targets[("detection", f"batched HF generate + hook, batch {BATCH}", "hf")] == 0.9
    assert targets[("patch resid_pre", "plain forward, same tokens", "bridge")] == 0.8
    assert targets[("patch resid_pre", "plain HF forward, same tokens", "hf")] == 0.8
    eager = ("patch heads", "plain HF forward, eager attention, same tokens", "hf")
    assert targets[eager] == 0.8
    meta = data["meta"]
    assert meta["device"] == "cpu" and meta["command"].startswith("python -m benchmarks.run")
    assert meta["complete"] is True
    assert {"date", "versions", "hardware", "settings"} <= set(meta)
    for r in data["rows"]:  # every generation ran its 3 tokens (no early stop)
        detail = r["detail"] or {}
        assert detail.get("new_tokens", 3) == 3 and detail.get("mean_new_tokens", 3) == 3, r
    generating = [r for r in rows if "new_tokens" in (r["detail"] or {})]
    assert len(generating) == 9  # HF per-trial and batched, TL per-trial ×2, mechintro ×5
    table = (tmp_path / "results.md").read_text()
    printed = capsys.readouterr().out
    for r in data["rows"]:
        assert r["name"] in table and r["name"] in printed
    for r in data["rows"]:  # the Gemma-3 shape too
        assert r["status"] in ("ok", "model", "not implemented"), (r["name"], r["note"])
        if r["status"] in ("ok", "model") and not r["bound"]:
            assert r["ratio"] is not None and math.isfinite(r["ratio"]) and r["ratio"] > 0, r


def test_without_transformer_lens_the_hf_rows_still_run(tmp_path, monkeypatch):
    monkeypatch.setattr(suites, "have_transformer_lens", lambda: False)
    args = [*SMALL, "--shapes", "tiny", "--groups", "forward", "--out", str(tmp_path)]
    assert run.main(args) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    by_backend = {r["backend"]: r for r in rows}
    assert by_backend["hf"]["status"] == "ok"
    for b in ("hooked", "bridge"):
        assert by_backend[b]["status"] == "skipped"
        assert "transformer_lens is not installed" in by_backend[b]["note"]


@pytest.mark.parametrize("name", ["tiny", "tiny-gemma3"])
def test_the_parameter_formula_matches_the_hf_model(name, tmp_path):
    shape = SHAPES[name]
    style = "gemma3" if shape.arch == "gemma3" else "llama"
    tok = build_tokenizer(tmp_path, style, shape.vocab, n_concepts=6)
    model = build_model(shape, tok, device="meta", dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == param_count(shape, len(tok))
    assert weight_bytes(model) == decode_weight_bytes(shape, len(tok), elt=4)


def test_the_real_shapes_have_the_real_parameter_counts():
    assert param_count(SHAPES["llama-7b"], 32_000) == 6_738_415_616  # Llama-2-7b
    assert param_count(SHAPES["gemma3-1b"], 262_144) == 999_885_952  # gemma-3-1b-it
    assert param_count(SHAPES["llama3-1b"], 128_256) == 1_235_814_400  # Llama-3.2-1B
    # gemma-3-27b-it's text model (tests/unit/test_memory.py counts it on the meta device)
    assert param_count(SHAPES["gemma3-27b"], 262_208) == 27_009_346_304


def test_the_roofline_of_the_issue_trial():
    """Issue 7: the roofline of a 32-token trial at batch 64 on an H100, Llama-3.2-1B shape,
    is under 1 ms per trial; decoding is memory bound, so it is at least the weights' time."""
    shape = SHAPES["llama3-1b"]
    wbytes = decode_weight_bytes(shape, 128_256)
    h100 = Hardware("H100", 3.35e12, 989e12)
    roof = roofline_seconds(shape, h100, wbytes, batch=64, prompt=140, shared=110, new_tokens=32)
    per_trial = roof["total"] / 64
    assert 31 * wbytes / h100.bandwidth / 64 < per_trial < 1e-3
    longer = roofline_seconds(shape, h100, wbytes, batch=64, prompt=140, shared=0, new_tokens=32)
    assert longer["prefill"] > roof["prefill"]  # the shared prefix is computed once


def test_ratios_are_relative_to_the_reference():
    rows = [
        Row("s", "g", "ours", "bridge", "trial", seconds=0.01, ref=True),
        Row("s", "g", "slow", "hooked", "trial", seconds=0.5, target=50.0),
        Row("s", "g", "fast", "hf", "trial", seconds=0.005, target=0.9),
        Row("s", "g", "todo", "bridge", "trial", status="not implemented"),
    ]
    add_ratios(rows)
    assert [r.ratio for r in rows] == [1.0, 50.0, 0.5, None]
    assert [r.passed for r in rows] == [None, True, False, None]
    table = markdown(rows)
    assert "PASS" in table and "FAIL" in table and "*not implemented*" in table


def test_the_cpu_numbers_are_measured(capsys):
    statement, process = cpu.time_import("import mechintro")
    assert 0 < statement <= process
    text = cpu.markdown(
        {
            "conditions": cpu.conditions(),
            "imports": {
                "import mechintro": {
                    "seconds": [statement],
                    "median": statement,
                    "process_median": process,
                }
            },
        }
    )
    assert "import mechintro" in text and "PASS" in text


def test_the_scale_benchmark_runs_on_the_cpu(tmp_path):
    """benchmarks.scale on the tiny Gemma-3 shape: a sweep per batch and attention, the
    roofline per batch, the parity row and a profile (no GPU kernels on the CPU)."""
    argv = ["--device", "cpu", "--shape", "tiny-gemma3", "--batches", "2,auto", "--new-tokens"]
    argv += ["2", "--sweep-batches", "1", "--profile", "2", "--host", "2", "--out", str(tmp_path)]
    assert scale.main(argv) == 0
    data = json.loads((tmp_path / "scale.json").read_text())
    assert data["meta"]["complete"]
    got = [(s["attention"], s["requested"]) for s in data["sweeps"]]
    assert got == [(a, b) for a in ("eager", "mechintro_grouped") for b in ("2", "auto")]
    for s in data["sweeps"]:
        assert s["trials_per_s"] > 0 and s["roofline_trials_per_s"] > s["trials_per_s"]
        assert s["batch"] == (2 if s["requested"] == "2" else 512)  # auto: capped by max_batch
    (parity,) = data["parity"]  # each entry against the first
    assert parity["attentions"] == ["eager", "mechintro_grouped"]
    assert parity["tokens_equal"] == parity["tokens"] > 0  # fp32: same tokens
    assert parity["relative"] < 1e-5
    assert set(data["profiles"]) == {"eager", "mechintro_grouped"}
    assert set(data["hosts"]) == {"eager", "mechintro_grouped"}  # --host: cProfile per attention
    ours = data["hosts"]["eager"]["mechintro_by_cumulative"]
    assert any("run_sweep" in r["function"] for r in ours)
    assert "Host profile, eager, one batch of 2" in (tmp_path / "scale.md").read_text()
    assert "| mechintro_grouped | 2 |" in (tmp_path / "scale.md").read_text()


def test_kernels_are_grouped_by_part():
    assert scale.part_of("fmha_cutlassF_bf16_aligned_64x64_rf_sm80") == "attention"
    assert scale.part_of("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN") == "GEMM"
    copy = "void at::native::elementwise_kernel<128, 4, direct_copy_kernel_cuda>"
    assert scale.part_of(copy) == "copy (K/V repeat, cache, layout)"
    assert scale.part_of("void at::native::reduce_kernel<512, 1, MeanOps<float>>") == (
        "norm and reductions"
    )
    assert scale.part_of("void at::native::reduce_kernel<ArgMaxOps<float>>") == "sampling"
    assert scale.part_of("void at::native::vectorized_elementwise_kernel<4, MulFunctor>") == (
        "elementwise"
    )
    assert scale.part_of("something_else") == "other"
