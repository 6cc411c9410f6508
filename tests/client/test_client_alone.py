"""The client needs nothing of the server: with the service's packages made unimportable, the client library
and its command line still load and run (``pip install ./client-lib`` brings httpx alone)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCK_THE_SERVER = """
import sys
BLOCKED = ("media_cleaner", "fastapi", "starlette", "torch", "numpy", "uvicorn", "pydantic", "cv2", "av")

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not part of the client's install")
        return None

sys.meta_path.insert(0, Refuse())
sys.path.insert(0, sys.argv[1])
import media_cleaner_client as mc
assert mc.MediaCleanerClient and mc.TaskFailed
sys.exit(mc.main(["--version"]))
"""


def test_the_client_imports_and_runs_with_httpx_alone():
    result = subprocess.run([sys.executable, "-c", BLOCK_THE_SERVER, str(REPO / "client-lib")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1.0.0" in result.stdout + result.stderr


def test_the_client_package_declares_httpx_as_its_only_dependency():
    import tomllib
    project = tomllib.loads((REPO / "client-lib" / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0] for d in project["dependencies"]] == ["httpx"]
    assert project["scripts"]["media-cleaner-client"] == "media_cleaner_client.cli:main"
