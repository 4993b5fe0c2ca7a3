"""The architecture's import rules, checked by parsing vidiff's sources.

layers ← models ← pipelines ← cli; diffusion/ uses only the leaf modules; nothing imports diffusers, and
transformers only in ``vidiff/tokenizer.py`` (tokenization is delegated to it, never model code).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vidiff"
LEAVES = {"config", "loading", "strict_loading", "weight_files", "media", "image_loading", "image_processing", "tokenizer"}
# The one module allowed to import transformers (its tokenizers); no module may import diffusers.
TRANSFORMERS_IMPORTER = PACKAGE / "tokenizer.py"
# Which top-level parts of vidiff each part may import (besides the leaves).
ALLOWED = {
    "layers": {"layers"},
    "models": {"layers", "models"},
    "diffusion": {"diffusion"},
    "pipelines": {"diffusion", "models", "pipelines"},
    # The command line sits on top: it may use everything, and nothing may import it.
    "cli": {"cli", "pipelines", "models", "diffusion", "demo_checkpoints"},
}


def _vidiff_imports(path: Path) -> set[str]:
    """Top-level vidiff parts imported by ``path`` (relative and absolute imports)."""
    tree = ast.parse(path.read_text())
    depth_of_file = len(path.relative_to(PACKAGE).parts) - 1
    parts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(path.relative_to(PACKAGE).parts[:depth_of_file])[: depth_of_file - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                names = [target] if target else [[alias.name] for alias in node.names]
            elif node.module and node.module.split(".")[0] == "vidiff":
                names = [node.module.split(".")[1:] or [alias.name for alias in node.names]]
            else:
                continue
            parts.update(name[0] for name in names if name)
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


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path):
    part = path.relative_to(PACKAGE).parts[0]
    imported = _vidiff_imports(path) - LEAVES - {"__init__", "__version__"}
    if part in ALLOWED:
        assert imported <= ALLOWED[part], f"{path.name} ({part}) imports {sorted(imported - ALLOWED[part])}"
    elif path.stem in LEAVES:
        assert not imported, f"leaf module {path.name} imports {sorted(imported)}"
    if part not in ("cli", "__main__.py"):  # `python -m vidiff` runs the command line
        assert "cli" not in imported, f"{path.name} imports the command line"
    forbidden = {"diffusers"} if path == TRANSFORMERS_IMPORTER else {"diffusers", "transformers"}
    assert not (forbidden & _third_party(path)), f"{path.name} imports {sorted(forbidden & _third_party(path))}"


def test_the_checker_sees_imports():
    """Guard: the parser must find known imports, or the rule test above would pass vacuously."""
    assert _vidiff_imports(PACKAGE / "pipelines" / "svd.py") >= {"diffusion", "models", "pipelines", "image_processing"}
    assert "loading" in _vidiff_imports(PACKAGE / "models" / "base.py")
    assert "transformers" in _third_party(TRANSFORMERS_IMPORTER)
    assert "tokenizer" in _vidiff_imports(PACKAGE / "pipelines" / "prompts.py")
