"""The code's layout: no import runs back up the layers, no two files import each other, no file is too
long. Every .py outside tests/ is parsed (never imported) with `ast`; an import anywhere in a file counts, at module
level or inside a function."""
import ast
import os

from tests.conftest import ROOT

MAX_LINES = 500
# files over MAX_LINES while they are being split elsewhere; each entry says why, and goes when its split lands
LONG_EXEMPT = {}
LOWER_LAYERS = ("utils", "attacks", "models")  # the library: it never reaches up to the tools or the scripts
SKIP_DIRS = {"tests", "data", "runs", "local", "docs", "__pycache__"}


def python_files() -> dict:
    """{module name: path relative to ROOT} of every .py outside tests/ (and outside hidden and output folders)."""
    out = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (folder == ROOT and d in SKIP_DIRS))
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), ROOT)
                parts = rel[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = rel
    return out


def imports(module: str, path: str, known: set, root: str = ROOT) -> set:
    """The repository's modules that `module` imports anywhere in its file: `from a import b` counts as a.b when
    that is a module of ours, else as a; relative imports are resolved against the file's package."""
    tree = ast.parse(open(os.path.join(root, path)).read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()

    def ours(name):
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(ours(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:
                full = f"{base}.{a.name}" if base else a.name
                found.add(full if full in known else ours(base))
    return {m for m in found if m and m != module}


def graph() -> dict:
    files = python_files()
    return {m: imports(m, p, set(files)) for m, p in files.items()}


def test_the_library_never_imports_the_tools_or_the_scripts():
    scripts = {m for m, p in python_files().items() if os.sep not in p}  # train_eval_part*.py at the root
    bad = [f"{m} imports {d}" for m, deps in graph().items() if m.split(".")[0] in LOWER_LAYERS
           for d in sorted(deps) if d.split(".")[0] == "tools" or d in scripts]
    assert not bad, bad


def test_no_two_modules_import_each_other():
    g = graph()
    bad = sorted({" <-> ".join(sorted((a, b))) for a, deps in g.items() for b in deps if a in g.get(b, ())})
    assert not bad, bad


def test_no_file_outside_tests_is_too_long():
    long = {p: n for p in python_files().values()
            if (n := len(open(os.path.join(ROOT, p)).read().splitlines())) > MAX_LINES and p not in LONG_EXEMPT}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_the_layout_checks_see_every_kind_of_import(tmp_path):
    """The resolver itself: relative, from-package, dotted and function-level imports are all found."""
    (tmp_path / "pkg").mkdir()
    src = ("import os\nfrom . import b\nfrom .c import f\nimport pkg.d as d\nfrom pkg import e\n"
           "def g():\n    from tools.x import y\n")
    (tmp_path / "pkg" / "a.py").write_text(src)
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.e", "tools", "tools.x"}
    found = imports("pkg.a", os.path.join("pkg", "a.py"), known, root=str(tmp_path))
    assert found == {"pkg.b", "pkg.c", "pkg.d", "pkg.e", "tools.x"}
