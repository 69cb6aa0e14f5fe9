"""``python -m mechintro.organism.evaluate DIR``: an organism's detection on its train and
held-out words (:mod:`mechintro.experiments.trials`)."""

from __future__ import annotations

from collections.abc import Sequence

from mechintro.experiments.trials import detection_trials, summary


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mechintro.organism.evaluate DIR``: detection on train and held-out words."""
    import argparse
    import json
    from pathlib import Path

    from mechintro.models import load_model
    from mechintro.organism import corpus
    from mechintro.organism.train import concept_vectors

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("folder", help="an organism folder (its base must be at ../base)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--strengths", default="0.25,0.5,1,1.5,2,3")
    a = p.parse_args(argv)
    folder = Path(a.folder)
    meta = json.loads((folder / "training.json").read_text())
    layer = meta["config"]["layer"]
    cs = corpus.concepts(meta["config"]["seed"])
    words = [c.word for c in cs if c.split != "baseline"]
    vec, resid = concept_vectors(folder.parent / "base", words, corpus.split(cs, "baseline"), layer,
                                 a.device)  # fmt: skip
    model = load_model(folder, device=a.device)
    strengths = [float(s) for s in a.strengths.split(",")]
    report = {}
    for name in ("train", "heldout"):
        df = detection_trials(model, vec, resid, layer=layer, words=corpus.split(cs, name),
                              strengths=strengths, trials=(1, 2, 3), n_controls=200)  # fmt: skip
        table = summary(df, corpus.category_of(cs))
        report[name] = table.reset_index().to_dict(orient="records")
        print(name, "\n", table.round(3).to_string())
        print(df[df.injected].sample(5, random_state=0)[["word", "strength", "reply"]].to_string())
    print("RESULT", json.dumps({"folder": str(folder), **report}))


if __name__ == "__main__":
    main()
