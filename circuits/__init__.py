"""circuits: gates, evidence carriers, steering attribution and attribution graphs.

Assembles mechintro's primitives into the circuit analyses of Macar et al. (2026).
"""
