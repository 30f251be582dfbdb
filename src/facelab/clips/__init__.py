"""Short video clips: data sets, decoding with a frame cache, clip models, grouped evaluation.

Layering: clips sits beside facelab.train; only facelab.cli imports it.
"""
