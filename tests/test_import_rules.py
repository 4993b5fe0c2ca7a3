"""The architecture's import rules, checked by parsing vidiff's sources.

Every top-level module and package of ``src/vidiff`` has a rule listing the parts it may import;
a part without a rule fails, so a new module must say where it sits. The arrows:
leaves ← layers ← models ← pipelines ← cli; diffusion/ (the math of sampling) imports nothing of
ours; schedulers/ (the public diffusers-style schedulers) wrap diffusion/ and may read files through
the leaves; pipelines use schedulers; demo/ (fixtures: tiny checkpoints, a tiny tokenizer) builds on
models, schedulers and pipelines; only cli/ (and ``python -m vidiff``) import cli/ or demo/.
Nothing imports diffusers, and transformers only ``vidiff/tokenizer.py`` (tokenization is
delegated to it, never model code).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vidiff"
# `from .. import __version__` reads the version string of the package root.
VERSION = "__version__"
# Leaf modules: single files that know no package of ours (each has its own rule below).
LEAVES = {
    "config", "loading", "strict_loading", "weight_files", "media", "image_loading", "video_loading",
    "image_processing", "tokenizer", "control_frames",
}
CORE = {"layers", "models", "diffusion", "schedulers", "pipelines"}
# The one module allowed to import transformers (its tokenizers); no module may import diffusers.
TRANSFORMERS_IMPORTER = PACKAGE / "tokenizer.py"
# Which top-level parts of vidiff each part may import, besides itself.
RULES: dict[str, set[str]] = {
    # leaves
    "config": set(),
    "strict_loading": set(),
    "weight_files": set(),
    "image_loading": set(),
    "loading": {"config", "strict_loading", "weight_files"},
    "video_loading": {"image_loading"},
    "media": {"image_loading", "video_loading"},
    "control_frames": {"media"},
    "image_processing": {"config", "image_loading", "loading"},
    "tokenizer": {"loading"},
    # the core, bottom up
    "layers": set(LEAVES),
    "models": {"layers"} | LEAVES,
    "diffusion": set(),  # schedules, steppers, the loop: pure tensor code, nothing of ours
    "schedulers": {"diffusion"} | LEAVES,
    "pipelines": {"diffusion", "schedulers", "models", VERSION} | LEAVES,
    # fixtures for the demo and the tests: outside the core, used only by the command line
    "demo": {"models", "schedulers", "pipelines", VERSION} | LEAVES,
    # the command line sits on top and may use everything; `python -m vidiff` runs it
    "cli": CORE | LEAVES | {"demo", VERSION, "batch", "server"},  # `vidiff batch`/`serve` dispatch there
    # `vidiff batch`: runs jobs through the command line's run(); Ray only inside it
    "batch": {"cli"},
    # `vidiff serve`: the HTTP job queue over the command line's run()
    "server": {"cli", VERSION},
    "__main__": {"cli"},
    # the package root re-exports the public API (never the command line or the fixtures)
    "__init__": CORE | LEAVES,
}
# The only parts that may import the command line or the fixtures.
ABOVE_THE_LIBRARY = {"cli", "__main__", "batch", "server"}


def _vidiff_imports(path: Path) -> set[str]:
    """Top-level vidiff parts imported by ``path`` (relative and absolute imports)."""
    return _vidiff_imports_of(path.read_text(), path)


def _vidiff_imports_of(source: str, path: Path) -> set[str]:
    """Top-level vidiff parts imported by ``source``, read as the module at ``path`` in the package."""
    tree = ast.parse(source)
    depth_of_file = len(path.relative_to(PACKAGE).parts) - 1
    parts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(path.relative_to(PACKAGE).parts[:depth_of_file])[: depth_of_file - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                names = [target] if target else [[alias.name] for alias in node.names]
            elif node.module and node.module.split(".")[0] == "vidiff":
                inner = node.module.split(".")[1:]
                names = [inner] if inner else [[alias.name] for alias in node.names]
            else:
                continue
            parts.update(name[0] for name in names if name)
        elif isinstance(node, ast.Import):  # `import vidiff.models.clip`
            dotted = [alias.name.split(".") for alias in node.names]
            parts.update(name[1] for name in dotted if name[0] == "vidiff" and len(name) > 1)
    return parts


def _third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def _part(path: Path) -> str:
    """The top-level part of vidiff that ``path`` belongs to: a package name or a module stem."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path):
    part = _part(path)
    assert part in RULES, f"{part} has no import rule: add one to RULES in {Path(__file__).name}"
    imported = _vidiff_imports(path) - {part}
    unknown = imported - set(RULES) - {VERSION}
    assert not unknown, f"{path.name} ({part}) imports {sorted(unknown)}, which have no rule (not parts of vidiff?)"
    assert imported <= RULES[part], f"{path.name} ({part}) imports {sorted(imported - RULES[part])}"
    forbidden = {"diffusers"} if path == TRANSFORMERS_IMPORTER else {"diffusers", "transformers"}
    assert not (forbidden & _third_party(path)), f"{path.name} imports {sorted(forbidden & _third_party(path))}"


def test_only_the_command_line_imports_the_command_line_and_the_fixtures():
    """The rules themselves: cli/ and demo/ sit above the library."""
    for part, allowed in RULES.items():
        if part not in ABOVE_THE_LIBRARY:
            assert not allowed & {"cli", "demo"}, f"the rule of {part} lets it import {sorted(allowed & {'cli', 'demo'})}"
    assert "demo" in RULES["cli"] and "cli" not in RULES["demo"]


def test_every_rule_names_a_part_that_exists():
    """A rule for a module that is gone (renamed, moved) would hide that its replacement has none."""
    parts = {_part(path) for path in SOURCES}
    assert set(RULES) <= parts, f"rules for parts that do not exist: {sorted(set(RULES) - parts)}"
    assert set(RULES) >= parts


def test_the_checker_sees_imports():
    """Guard: the parser must find known imports, or the rule test above would pass vacuously."""
    assert _vidiff_imports(PACKAGE / "pipelines" / "svd.py") >= {"models", "pipelines", "image_processing"}
    assert "loading" in _vidiff_imports(PACKAGE / "models" / "base.py")
    assert "transformers" in _third_party(TRANSFORMERS_IMPORTER)
    assert "tokenizer" in _vidiff_imports(PACKAGE / "pipelines" / "prompts.py")
    assert {"demo", "cli"} <= _vidiff_imports(PACKAGE / "cli" / "demo.py")
    assert {"models", "pipelines", VERSION} <= _vidiff_imports(PACKAGE / "demo" / "checkpoints.py")
    assert _vidiff_imports(PACKAGE / "__main__.py") == {"cli"}


def test_the_checker_reads_every_import_form():
    """Absolute, relative, several names from the package root, and plain ``import vidiff.x``."""
    module = PACKAGE / "models" / "probe.py"  # never written: only its place in the tree matters
    source = (
        "from vidiff import media, tokenizer\nimport vidiff.demo.checkpoints\nfrom ..layers import attention\n"
        "from . import base\nfrom .. import loading\nimport torch\n"
    )
    assert _vidiff_imports_of(source, module) == {"media", "tokenizer", "demo", "layers", "models", "loading"}
