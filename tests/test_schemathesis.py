"""Property-based fuzzing of every operation in /openapi.json with schemathesis: no input gives a 500."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from test_server_process import Server


def test_no_server_errors(tmp_path):
    server = Server(tmp_path / "data", warm_up="false").start()   # no model loading competing for the CPU
    try:
        cli = Path(sys.executable).with_name("schemathesis")
        result = subprocess.run(
            [str(cli) if cli.exists() else shutil.which("schemathesis"), "run", f"{server.url}/openapi.json",
             "--checks", "not_a_server_error", "--phases", "coverage,fuzzing", "--max-examples", "10",
             "--workers", "2", "--seed", "1", "--request-timeout", "60"],
            capture_output=True, text=True, timeout=600)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Test cases:" in result.stdout and " passed" in result.stdout, result.stdout[-3000:]
