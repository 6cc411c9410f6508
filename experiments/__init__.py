"""Research experiments behind the figures in EVALUATION.md: each reproduces a table or a choice made in
the engines, and none is imported by the service.

Run from the repository root as modules: ``.venv/bin/python -m experiments.voice_transfer_probe …``.
"""
