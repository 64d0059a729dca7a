"""docs/architecture.md stays true: every package and module it names exists, every
package of truckllm/ has its row, and no module imports a package its row says it must
not (imports under `if TYPE_CHECKING:` are types only, and allowed)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "truckllm"
DOC = (ROOT / "docs" / "architecture.md").read_text()
ROW = re.compile(r"^\| `(\w+)/` \|.*\| ([^|]*) \|$", re.MULTILINE)
RULES = {package: set(re.findall(r"`(\w+)`", forbidden)) for package, forbidden in ROW.findall(DOC)}


def named_paths() -> set[str]:
    """Backticked file and directory names: `pkg/`, `pkg/module.py`, `module.py`, `tests/...`."""
    names = set(re.findall(r"`([\w/.]+(?:\.py|/))`", DOC))
    return {name for name in names if not name.startswith(".")}


def exists(name: str) -> bool:
    if name.startswith(("tests/", "docs/")):
        return (ROOT / name).exists()
    if (PACKAGE / name).exists():
        return True
    # a module or subpackage named in its package's row: `state.py`, `shared/`
    return any(PACKAGE.rglob(name.rstrip("/")))


def test_every_named_package_and_module_exists() -> None:
    names = named_paths()
    assert len(names) > 30, names                # the tables were read
    assert not [name for name in sorted(names) if not exists(name)]


def test_every_package_and_top_level_module_is_described() -> None:
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == set(RULES), "rows of the Packages table"
    modules = {path.name for path in PACKAGE.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert not [module for module in sorted(modules) if f"`{module}`" not in DOC]


def runtime_imports(path: Path) -> set[str]:
    """The truckllm packages (or top-level modules) a module imports at run time."""
    tree = ast.parse(path.read_text())
    types_only = {id(node) for block in ast.walk(tree)
                  if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                  for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in types_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found |= {module.split(".")[1] for module in modules
                  if module.startswith("truckllm.")}
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_no_package_imports_what_its_row_forbids(package: str) -> None:
    forbidden = RULES[package]
    broken = {f"{path.relative_to(ROOT)} imports {sorted(runtime_imports(path) & forbidden)}"
              for path in (PACKAGE / package).rglob("*.py") if runtime_imports(path) & forbidden}
    assert not broken


def test_only_the_cli_imports_the_server() -> None:
    importers = {path.relative_to(PACKAGE).parts[0] for path in PACKAGE.rglob("*.py")
                 if "server" in runtime_imports(path)} - {"server"}
    assert importers <= {"cli.py"}
