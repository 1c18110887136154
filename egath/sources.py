"""What code a result depends on: a module, the egath modules it imports (followed through the
package, imports inside functions too), and a digest of each that ignores comments, formatting
and docstrings.

A training's run key (egath.training.Run.key) holds these digests for the method's module and
egath.training, so that an edited method, or an upgraded package, trains again instead of reusing
a model of the old code. The workflow gives the `train` and `tune` rules a digest of the same kind
as a param, so that such an edit reruns their jobs: Snakemake itself sees only a rule's script
change, not the modules it imports. Imports outside egath (torch, a user's helper modules) are
not followed.

Imports nothing beyond the standard library: the workflow calls it when it starts.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent  # what egath's module names are relative to


def code_digests(roots) -> dict[str, str]:
    """{file: digest} of each root (an egath module name, a .py path, or an importable module)
    and of every egath module it imports, directly or not.

    egath's files are named relative to the package's folder (`egath/training.py`), a root that
    is not an egath module as it was given (`methods/toy.py`), so that the digests do not change
    when the project moves. A file that does not parse stops with its file and line.
    """
    named = {}
    for root in roots:
        path = _root_path(root)
        named[path] = _name(path) if _in_package(path) else str(root)
    digests, todo = {}, list(named)
    while todo:
        path = todo.pop()
        imported, digests[path] = _read(path, path.read_bytes())
        for module in filter(None, map(_module_path, imported)):
            if module not in named:
                named[module] = _name(module)
                todo.append(module)
    return {named[path]: digests[path] for path in sorted(named, key=named.get)}


def code_sha256(roots) -> str:
    """One digest of code_digests(roots)."""
    text = json.dumps(code_digests(roots), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _root_path(root) -> Path:
    root = str(root)
    if root.endswith(".py"):
        return Path(root).resolve()
    path = _module_path(root)
    if path is None:
        spec = importlib.util.find_spec(root)
        if spec is None or spec.origin is None:
            raise ValueError(f"no module {root!r} to read the code of")
        path = Path(spec.origin).resolve()
    return path


def _module_path(name: str) -> Path | None:
    """The file of an egath module (a package: its __init__.py), or None."""
    if name.split(".")[0] != PACKAGE.name:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _in_package(path: Path) -> bool:
    return path.is_relative_to(PACKAGE)


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@lru_cache(maxsize=None)
def _read(path: Path, source: bytes) -> tuple[frozenset[str], str]:
    """The modules a file imports and its digest, once per content (the workflow asks for the
    same files for every method).

    Imports: with every package an import runs (`a.b.c`: a, a.b, a.b.c) and the names
    `from a import b` may mean as modules (a.b). Digest: sha256 of the syntax tree without its
    docstrings, so comments, formatting and documentation do not change it.
    """
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise ValueError(f"{path}:{e.lineno}: {e.msg}: {(e.text or '').strip()!r}") from None
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(path, node.module, node.level)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    imported = frozenset(".".join(parts[:i]) for parts in (n.split(".") for n in names)
                         for i in range(1, len(parts) + 1))
    return imported, hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def _absolute(path: Path, module: str | None, level: int) -> str:
    """The absolute name of `from <level dots><module> import ...` in `path`."""
    if level == 0 or not _in_package(path):
        return module or ""
    package = path.relative_to(ROOT).parent.parts
    return ".".join((*package[:len(package) - (level - 1)], *([module] if module else [])))
