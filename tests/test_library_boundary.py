"""The library never imports the CLI: importing any library module leaves typer and rich unloaded.

The CLI is ``cli``, ``help``, ``options``, ``ui``, ``__main__`` and ``commands.*``; everything else
in the package is library (the report modules too: their Rich renderers import Rich inside
themselves). One subprocess imports every library module in turn and names the first one after
which typer or rich is in ``sys.modules``. An import inside a function escapes that check until
the function runs, so a second test reads every library module's source: no import of typer,
rich or a CLI module anywhere, except Rich inside the report modules' ``render_*`` functions.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys

import ucan_cli

CLI_MODULES = {"ucan_cli.cli", "ucan_cli.help", "ucan_cli.options", "ucan_cli.ui", "ucan_cli.__main__"}
CLI_PACKAGES = ("ucan_cli.commands",)

CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
    loaded = sorted(m for m in ("typer", "rich") if m in sys.modules)
    if loaded:
        print(f"{name} imports {', '.join(loaded)}")
        sys.exit(1)
print("clean")
"""


def library_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(ucan_cli.__path__, "ucan_cli.")]
    return sorted(
        n for n in ["ucan_cli", *names]
        if n not in CLI_MODULES and not any(n == p or n.startswith(p + ".") for p in CLI_PACKAGES)
    )


def check(modules: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK, *modules], capture_output=True, text=True, timeout=300)


def test_library_modules_leave_typer_and_rich_out():
    modules = library_modules()
    # The walk finds the library (a typo in the exclusions must not empty it).
    assert {"ucan_cli.flows.attenuate", "ucan_cli.methods.ucan.params", "ucan_cli.config", "ucan_cli.report.score"} <= set(modules)
    out = check(modules)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stdout + out.stderr


def test_the_check_catches_a_cli_import():
    """The same check fails, naming the module, when a module on the list imports the CLI."""
    out = check(["ucan_cli.config", "ucan_cli.ui"])
    assert out.returncode == 1 and out.stdout.strip() == "ucan_cli.ui imports rich, typer", out.stdout + out.stderr


def _cli_imports(source: str) -> list[str]:
    """``line: module`` for each import of typer, rich or a CLI module outside a ``render_*`` function."""
    cli = ("typer", "rich", *CLI_MODULES, *CLI_PACKAGES)
    found = []

    def visit(node: ast.AST, renderer: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            renderer = renderer or node.name.startswith("render_")
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            top = name.split(".")[0]
            if any(name == c or name.startswith(c + ".") for c in cli) and not (renderer and top == "rich"):
                found.append(f"{node.lineno}: {name}")
        for child in ast.iter_child_nodes(node):
            visit(child, renderer)

    visit(ast.parse(source), False)
    return found


def test_library_sources_import_no_cli_even_lazily():
    offenders = {}
    for name in library_modules():
        origin = importlib.util.find_spec(name).origin
        found = _cli_imports(open(origin, encoding="utf-8").read())
        if found:
            offenders[name] = found
    assert offenders == {}


def test_the_source_check_catches_a_lazy_import():
    source = "def run():\n    from ucan_cli.options import PANEL_METHOD\n\ndef render_x():\n    from rich.table import Table\n"
    assert _cli_imports(source) == ["2: ucan_cli.options", "2: ucan_cli.options.PANEL_METHOD"]
