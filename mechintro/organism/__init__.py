"""The built-in model organisms: small chat models that mechintro trains and ships.

``base``: a Llama-style model trained from scratch on a synthetic world (concepts with facts,
control questions, and introspection trials always answered "No"). ``introspective``: the base
with its upper blocks further trained to report injected concepts (:mod:`.train`). Both are
normal HF checkpoint folders: ``load_model("builtin:organism")`` or
``load_model("builtin:organism-base")``.
"""
