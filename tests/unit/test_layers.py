"""The layers of docs/architecture.md, held: protocol <- transport <- server / gateway <-
platform <- cli.  Every import in a module counts, at the top or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "openeas"

#: What each package may not import (a prefix of a dotted module name).
FORBIDDEN = {
    "protocol": ("openeas.",),  # but itself: see _imports_of
    "transport": ("openeas.server", "openeas.gateway", "openeas.platform", "openeas.cli"),
    "gateway": ("openeas.server", "openeas.platform", "openeas.cli"),
    "platform": ("openeas.server", "openeas.cli"),
}
#: Imports still allowed across a layer (layer, module), each with the work that removes it.
EXCEPTIONS: set[tuple[str, str]] = set()


def _imports_of(path: Path) -> set[str]:
    """The openeas modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
    return {name for name in found if name == "openeas" or name.startswith("openeas.")}


def _violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((SRC / layer).rglob("*.py")):
        for module in sorted(_imports_of(path)):
            if layer == "protocol" and module.startswith("openeas.protocol"):
                continue
            if (layer, module) in EXCEPTIONS:
                continue
            if module.startswith(FORBIDDEN[layer]):  # the bare package (its version) is fine
                bad.append(f"{path.relative_to(SRC)} imports {module}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_lies_below_it(layer: str) -> None:
    assert _violations(layer) == []
