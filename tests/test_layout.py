"""The package's layers, checked: the folder names are the architecture, and imports only go downwards.

    api/         HTTP only                       → service, media (probing an upload), params, config
    service/     the running service minus HTTP  → store, queue, media, protection.registry, evaluation
    media/       ffmpeg, probe, pipeline         → protection.seams only (never an engine)
    protection/  seams, registry, engines        → nothing above it (no media, service, api, evaluation)
    evaluation/  the offline harness             → media, protection (what it measures), config, params

Every ``import`` and ``from … import`` of every module (at any depth, including those inside functions) is
read with ``ast``; the test fails naming the module, the line and the rule it breaks.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "media_cleaner"

# layer → layers (and single modules) it must never import
FORBIDDEN = {
    "media_cleaner.protection": ("media_cleaner.media", "media_cleaner.service", "media_cleaner.api",
                                 "media_cleaner.evaluation", "media_cleaner.cli"),
    "media_cleaner.media": ("media_cleaner.service", "media_cleaner.api", "media_cleaner.evaluation",
                            "media_cleaner.protection.registry", "media_cleaner.protection.face_cloak",
                            "media_cleaner.protection.voice_mask", "media_cleaner.protection.torch_env",
                            "media_cleaner.cli"),
    "media_cleaner.service": ("media_cleaner.api", "media_cleaner.cli"),
    "media_cleaner.evaluation": ("media_cleaner.service", "media_cleaner.api", "media_cleaner.cli"),
    "media_cleaner.api": ("media_cleaner.protection", "media_cleaner.evaluation", "media_cleaner.cli"),
    # the engines see the seams, torch and their weights, never the registry that builds them
    "media_cleaner.protection.face_cloak": ("media_cleaner.protection.registry", "media_cleaner.protection.voice_mask"),
    "media_cleaner.protection.voice_mask": ("media_cleaner.protection.registry", "media_cleaner.protection.face_cloak"),
    "media_cleaner.protection.seams": ("media_cleaner.protection.registry", "media_cleaner.protection.face_cloak",
                                       "media_cleaner.protection.voice_mask", "torch"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file (or in ``source`` as if it were that file),
    relative ones resolved."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package[: len(package) - (node.level - 1)]
                base = ".".join(prefix + ([node.module] if node.module else []))
            found.append((node.lineno, base))
            # "from media_cleaner.protection import face_cloak" imports the sub-module face_cloak
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def within(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_layers_exist():
    for layer in ("api", "service", "service/store", "service/queue", "media", "protection", "evaluation"):
        assert (PACKAGE / layer / "__init__.py").is_file(), layer
    # Nothing but the entry points and the shared definitions sits at the package root.
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "__main__.py", "cli.py", "config.py",
                                                             "params.py"]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_only_go_downwards(path):
    here = module_name(path)
    broken = []
    for line, imported in imports(path):
        for layer, never in FORBIDDEN.items():
            if within(here, layer):
                broken += [f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported} ({layer} must not "
                           f"import {rule})" for rule in never if within(imported, rule)]
    assert not broken, "\n".join(broken)


def test_the_checker_sees_a_broken_rule():
    """The rule check itself works: imports upwards are found, relative ones resolved."""
    found = imports(PACKAGE / "media" / "pipeline.py",
                    "from ..service.core import MediaCleanerService\nimport media_cleaner.api.app\n")
    assert sorted(m for _, m in found) == ["media_cleaner.api.app", "media_cleaner.service.core",
                                           "media_cleaner.service.core.MediaCleanerService"]


def test_the_folders_the_code_reads_are_the_repository_s():
    """Modules that moved deeper still find ffmpeg/, models/ and the page's files."""
    from media_cleaner.api.page import STATIC
    from media_cleaner.media.ffmpeg import LOCAL_FFMPEG_DIR
    from media_cleaner.protection.weights import WEIGHTS_ENV, models_dir
    root = PACKAGE.parent
    assert LOCAL_FFMPEG_DIR == root / "ffmpeg" and (STATIC / "index.html").is_file()
    assert models_dir() == root / "models" or WEIGHTS_ENV in __import__("os").environ


def test_pyproject_installs_every_package_and_the_entry_points():
    """``pip install .`` ships every package of the tree (a new folder forgotten here would be missing from an
    install) and the three commands."""
    import tomllib
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    present = {module_name(init) for init in PACKAGE.rglob("__init__.py")}
    assert present | {"media_cleaner_client"} == listed
    assert set(config["project"]["scripts"]) == {"media-cleaner", "media-cleaner-server", "media-cleaner-client"}
    assert "web/static/*" in config["tool"]["setuptools"]["package-data"]["media_cleaner"]
