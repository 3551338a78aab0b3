"""The import edges of DESIGN.md §2, held by parsing every module's imports."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "src" / "nmtkit"


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules():
    return {p.relative_to(PKG).with_suffix("").as_posix().replace("/", "."): imports_of(p) for p in PKG.rglob("*.py")}


def test_typer_and_rich_only_in_cli():
    for name, imps in modules().items():
        if name != "cli":
            assert not {i for i in imps if i.split(".")[0] in ("typer", "rich", "click")}, name


def test_nothing_imports_cli():
    for name, imps in modules().items():
        assert "nmtkit.cli" not in imps or name == "__main__", name


def test_models_and_data_never_import_each_other():
    for name, imps in modules().items():
        if name.startswith("models."):
            assert not any(i.startswith("nmtkit.data") for i in imps), name
        if name.startswith("data."):
            assert not any(i.startswith("nmtkit.models") for i in imps), name


LAYERS = [
    {"errors", "files", "config", "runtime"},
    {"tokenization", "vocab", "evaluation", "plots"},
    {"models", "data"},
    {"objectives", "decoding", "checkpoint"},
    {"training", "export"},
    {"workflows"},
    {"cli"},
    {"__main__"},
]


def layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_imports_run_downward_only():
    for name, imps in modules().items():
        if name == "__init__":
            continue
        for imp in imps:
            if imp.startswith("nmtkit."):
                target = imp.split(".", 1)[1]
                assert layer(target) <= layer(name), f"{name} imports {imp}, which is above it"


def test_heavy_libraries_are_imported_lazily():
    """The CLI and the workflows load torch, datasets and sacrebleu only inside the commands that need them."""
    import subprocess
    import sys

    code = ("import sys, nmtkit.cli, nmtkit.workflows; "
            "print(sorted(m for m in ('torch', 'datasets', 'sacrebleu') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
