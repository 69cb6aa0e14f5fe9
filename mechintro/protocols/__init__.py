"""Introspection protocols: the prompts and trials of the source studies (PROTOCOLS.md §3–§6)."""
