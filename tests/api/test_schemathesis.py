"""Property-based fuzzing of every operation in /openapi.json with schemathesis: no input gives a 500, and
every status the server answers is documented (on a server with API keys too, where every operation but
/health can answer 401)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.live_server import Server

from media_cleaner.service.auth import hash_key


@pytest.mark.parametrize("keys", [None, f"{hash_key('key-of-alice')}:alice:user"], ids=["open", "with-keys"])
def test_no_server_errors_and_no_undocumented_status(tmp_path, keys):
    settings = {"warm_up": "false"} | ({"api_keys": keys} if keys else {})   # no model loading competing
    server = Server(tmp_path / "data", **settings).start()
    try:
        cli = Path(sys.executable).with_name("schemathesis")
        result = subprocess.run(
            [str(cli) if cli.exists() else shutil.which("schemathesis"), "run", f"{server.url}/openapi.json",
             "--checks", "not_a_server_error,status_code_conformance", "--phases", "coverage,fuzzing", "--max-examples", "10",
             "--workers", "2", "--seed", "1", "--request-timeout", "60"],
            capture_output=True, text=True, timeout=600)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Test cases:" in result.stdout and " passed" in result.stdout, result.stdout[-3000:]
