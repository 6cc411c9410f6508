"""Research experiments behind the figures in EVALUATION.md: each reproduces a table or a choice made in
the engines, and none is imported by the service.

Run from the repository root as modules: ``.venv/bin/python -m experiments.voice_transfer_probe …``.

Several default to the development media at ``../shared/media/dev`` (talking-head clips, face photos, speech).
That folder is outside this repository, beside the checkout, and is never committed: the media's rights stay
with their owners, so a fresh clone has none. Each experiment takes any other folder laid out the same way.
"""
