"""GPU throughput of mechintro against the baselines users would otherwise write (issue 7).

Run ``python -m benchmarks.run --shapes gemma3-1b,llama-7b --out DIR`` on an H100/H200 (see
``benchmarks/README.md``), and ``python -m benchmarks.cpu`` for the CPU numbers. Models are
random-weight Hugging Face models of realistic shapes (:mod:`benchmarks.shapes`), built
directly on the device, with an offline word-level tokenizer and a chat template.
"""
