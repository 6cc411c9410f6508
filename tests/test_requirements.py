"""What the service imports, its install (requirements.txt alone) brings.

A fresh interpreter runs one real task the way a worker does (the real engines, then the task report and
its preview sheet) on a site-packages that holds only what requirements.txt installs: links to the files of
the distributions it names and of their dependencies, nothing else of this test environment. Optional
imports of other packages then fall back as they would on such a server, and a module the service needs
from the evaluation's or the tests' requirements fails the task (scikit-image once made every report an
error on a server installed the documented way).
"""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support import media_factory as mf

ROOT = Path(__file__).resolve().parents[1]

# Run with -S (no site-packages), then only the folder of links is added as a site folder (its .pth too).
RUN_ONE_TASK = """
import json, site, sys
from pathlib import Path
site.addsitedir(sys.argv[2])

from media_cleaner.service.queue.jobs import Job, run_job
from media_cleaner.params import ProtectionParams
from media_cleaner.media.cancel import CancelToken
from media_cleaner.protection.registry import build_protectors

work = Path(sys.argv[1])
job = Job(task_id="t", input_path=work / "clip.mp4", output_path=work / "out.mp4", params=ProtectionParams(),
          temp_dir=work / "scratch", threads=2, crf=17, preset="ultrafast", audio_bitrate="128k", ffmpeg=None,
          stall_timeout_s=60, max_duration_s=None, preview_path=work / "preview.png", data_dir=work)
report = run_job(job, lambda params, threads: build_protectors(params, threads=threads), lambda f: None,
                 CancelToken())
print(json.dumps(report))
"""


def _required_distributions() -> set[str]:
    """requirements.txt's distributions and, recursively, what they require (markers evaluated here)."""
    environment = {**default_environment(), "extra": ""}
    pending = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            pending.append(Requirement(line))
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker is not None and not requirement.marker.evaluate(environment)):
            continue
        seen.add(name)
        try:
            pending += [Requirement(text) for text in importlib.metadata.requires(requirement.name) or []]
        except importlib.metadata.PackageNotFoundError:
            pass   # not installed here (a platform-specific one): nothing imported it either
    return seen


def _site_with_only(distributions: set[str], folder: Path) -> Path:
    """A site folder of links to the installed files of ``distributions`` (top-level entries only)."""
    folder.mkdir()
    for dist in importlib.metadata.distributions():
        if canonicalize_name(dist.metadata["Name"]) not in distributions:
            continue
        for top in {file.parts[0] for file in dist.files or []}:
            source = Path(dist.locate_file(top))
            # ".." entries are scripts in the venv's bin/, not importable.
            if top != ".." and top != "__pycache__" and source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


def test_a_task_needs_only_what_requirements_txt_installs(tmp_path):
    mf.make_video(tmp_path / "clip.mp4", seconds=1, size="160x120")
    site = _site_with_only(_required_distributions(), tmp_path / "site-packages")
    result = subprocess.run([sys.executable, "-S", "-c", RUN_ONE_TASK, str(tmp_path), str(site)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "error" not in report, report["error"]
    assert "note" not in report["detection"]["mtcnn"] and report["ssim"] > 0.9
    assert (tmp_path / "preview.png").stat().st_size > 0
