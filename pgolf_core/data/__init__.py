"""Data: the challenge's shard format, the training/validation token streams, the BPB byte tables, and
tools that make data (the embedded sample, your own text, the official FineWeb download).

Submodules are imported directly (`from pgolf_core.data.tokens import ...`); nothing is imported
here, so `pgolf data --help` and the CLI stay quick to start.
"""
