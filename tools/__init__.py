"""Operations trials: start a real server and measure it under crashes, load and memory pressure.

Run from the repository root as modules: ``.venv/bin/python -m tools.crash_trial`` (see each one's docstring).
"""
