"""The package files that some code imports, followed to the end: its import closure within litpipe (or,
for a researcher's own network, within the repository).

Read from the source, not by importing it: every `import` and `from ... import` statement counts, at the
top of a module or inside a function (litpipe imports lazily so that `--help` is instant), and so does
`importlib.import_module("litpipe.x")` with the name written out; importing `litpipe.a.b` runs
`litpipe/__init__.py` and `litpipe/a/__init__.py` as well. A module loaded by a name made at run time (as the
CLI loads a stage's module and its tools) is not followed: whoever asks for a closure names such modules as
roots.
"""

import ast
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGE = "litpipe"
SOURCE = Path("src")  # where the package lives, relative to the repository root
CODE_SUFFIXES = (".py", ".ipynb")


def closure(roots: Iterable[Path], source: Path = SOURCE, package: str | None = PACKAGE) -> list[Path]:
    """The package files (under `source`) that the code in `roots` imports, directly or through each other,
    with the roots that are package files themselves; sorted. `package` None: every module found under
    `source`, whatever its name (a repository's own packages, from its root)."""
    roots = [Path(root) for root in roots]
    # A root in the package is imported too (by a name made at run time): with its packages' __init__.py.
    found = {
        file
        for root in roots
        if (name := _module_name(root, source, package))
        for file in _files_run_by_import(name, source)
    }
    pending = [*roots, *found]
    while pending:
        path = pending.pop()
        for module in imported_modules(path, source, package):
            for file in _files_run_by_import(module, source):
                if file not in found:
                    found.add(file)
                    pending.append(file)
    return sorted(found)


def code_files(path: Path) -> Iterator[Path]:
    """`path` if it is code (Python or a notebook), else the code files in it when it is a directory."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.suffix in CODE_SUFFIXES and "__pycache__" not in file.parts:
                yield file
    elif path.suffix in CODE_SUFFIXES:
        yield path


def imported_modules(path: Path, source: Path, package: str | None = PACKAGE) -> Iterator[str]:
    """The dotted names of the modules of `package` (None: of any) that a file's statements import (a notebook:
    its code cells)."""
    this = _module_name(path, source, package)
    for node in ast.walk(ast.parse(_code(path), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, this)
            # `from litpipe import paths` imports the module litpipe.paths when there is one.
            names = [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")]
        elif _is_import_call(node):
            names = [node.args[0].value]
        else:
            continue
        yield from (name for name in names if package is None or name == package or name.startswith(package + "."))


def _is_import_call(node: ast.AST) -> bool:
    """`importlib.import_module("name")` or `__import__("name")`, the name a string written out."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return False
    function = node.func
    name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
    return name in ("import_module", "__import__") and isinstance(node.args[0].value, str)


def _files_run_by_import(module: str, source: Path) -> Iterator[Path]:
    """The files importing `module` runs: each package's __init__.py on the way, and the module's own file
    (nothing where no such module exists: `from litpipe.x import name` names an attribute)."""
    parts = module.split(".")
    for depth in range(1, len(parts) + 1):
        directory = source.joinpath(*parts[:depth])
        if (directory / "__init__.py").is_file():
            yield directory / "__init__.py"
        elif depth == len(parts) and directory.with_suffix(".py").is_file():
            yield directory.with_suffix(".py")


def module_file(module: str, source: Path) -> Path | None:
    """The file that defines `module` under `source`: its .py, or its package's __init__.py; None if none does."""
    directory = source.joinpath(*module.split("."))
    for candidate in (directory.with_suffix(".py"), directory / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _absolute(node: ast.ImportFrom, this: str | None) -> str:
    """The module a `from` statement imports from, relative ones resolved against the importing module."""
    if not node.level:
        return node.module or ""
    if this is None:
        raise ValueError(f"a relative import (line {node.lineno}) outside a package")
    package = this.split(".")[: -node.level]
    return ".".join(package + ([node.module] if node.module else []))


def _module_name(path: Path, source: Path, package: str | None = PACKAGE) -> str | None:
    """litpipe.a.b for source/litpipe/a/b.py (and for a package's __init__.py, its package plus __init__, so
    that its relative imports resolve against the package); None outside the package."""
    path = Path(path)
    if not path.is_relative_to(source / (package or "")) or path.suffix != ".py":
        return None
    return ".".join(path.relative_to(source).with_suffix("").parts)


def _code(path: Path) -> str:
    """A Python file's text, or a notebook's code cells without IPython's magics and shell lines."""
    text = Path(path).read_text()
    if Path(path).suffix != ".ipynb":
        return text
    cells = [cell["source"] for cell in json.loads(text)["cells"] if cell["cell_type"] == "code"]
    lines = "\n".join("".join(cell) if isinstance(cell, list) else cell for cell in cells).splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))
