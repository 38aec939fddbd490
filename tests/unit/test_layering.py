"""Dependencies point one way: domain <- engine <- adapters and the gRPC API.

Read off the source's import statements (function-level ones included), so a shortcut taken
in a hurry fails here rather than in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import oms

_PACKAGE = Path(oms.__file__).parent

# Which of the server's own parts each layer may import. The top-level modules (cli,
# bootstrap, config) wire everything together and may import anything.
_ALLOWED = {
    "domain": {"domain"},
    "engine": {"domain", "engine", "failpoints"},
    "adapters": {"domain", "engine", "adapters"},
    "api": {"domain", "engine", "api"},
    "failpoints": set(),
}
# Libraries that do I/O, kept out of the layers that must not do any.
_IO_LIBRARIES = {"asyncio", "redis", "hiredis", "grpc", "ccxt", "asyncpg", "aiohttp", "socket"}
_NO_IO = {"domain": _IO_LIBRARIES, "engine": _IO_LIBRARIES - {"asyncio"}}


def _layer(path: Path) -> str:
    return path.relative_to(_PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Names of the modules `path` imports ("." for a relative import, which would hide
    the layer it reaches into)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." if node.level else node.module or "")
    return found


def _violations(path: Path) -> list[str]:
    layer = _layer(path)
    imported = _imports(path)
    own = {name.split(".")[1] for name in imported if name.startswith("oms.")}
    roots = {name.split(".")[0] for name in imported}
    return [
        f"{path.relative_to(_PACKAGE)} imports {name}"
        for name in sorted((own - _ALLOWED[layer]) | (roots & _NO_IO.get(layer, set())))
    ] + [f"{path.relative_to(_PACKAGE)} imports relatively" for _ in roots & {"."}]


def test_each_layer_imports_only_the_layers_beneath_it() -> None:
    modules = [p for p in _PACKAGE.rglob("*.py") if _layer(p) in _ALLOWED]
    assert {_layer(p) for p in modules} == set(_ALLOWED)
    assert [v for path in sorted(modules) for v in _violations(path)] == []


def test_every_package_has_a_rule() -> None:
    packages = {p.name for p in _PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages <= set(_ALLOWED), f"no rule for {sorted(packages - set(_ALLOWED))}"
