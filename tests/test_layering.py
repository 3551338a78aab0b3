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


def group(module: str) -> str:
    return module.split(".")[0]


def test_typer_and_rich_only_in_cli():
    for name, imps in modules().items():
        if group(name) != "cli":
            assert not {i for i in imps if i.split(".")[0] in ("typer", "rich", "click")}, name


def test_nothing_imports_cli():
    for name, imps in modules().items():
        if group(name) not in ("cli", "__main__"):
            assert not any(i == "nmtkit.cli" or i.startswith("nmtkit.cli.") for i in imps), name


def test_cli_and_workflows_mirror_each_other():
    """The command group X lives in cli/X.py and calls workflows/X.py (cli/core.py holds what the groups share)."""
    cli = {p.stem for p in (PKG / "cli").glob("*.py")} - {"__init__", "core"}
    flows = {p.stem for p in (PKG / "workflows").glob("*.py")} - {"__init__"}
    assert cli == flows


def test_the_run_folder_layer_imports_no_command_group():
    imps = modules()["workflows.runs"]
    assert not [i for i in imps if i.startswith("nmtkit.workflows.")], imps


def test_no_module_is_too_long():
    """No module over about 500 lines, none over a tenth of the package."""
    sizes = {p: len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    total = sum(sizes.values())
    for path, lines in sizes.items():
        assert lines <= min(520, total // 10), (path.relative_to(PKG), lines, total)


def test_models_and_data_never_import_each_other():
    for name, imps in modules().items():
        if name.startswith("models."):
            assert not any(i.startswith("nmtkit.data") for i in imps), name
        if name.startswith("data."):
            assert not any(i.startswith("nmtkit.models") for i in imps), name


LAYERS = [
    {"errors", "files", "config", "runtime"},
    {"tokenization", "vocab", "evaluation", "plots", "hf"},
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

    names = [p.relative_to(PKG.parent).with_suffix("").as_posix().replace("/", ".")
             for folder in ("cli", "workflows") for p in (PKG / folder).glob("*.py") if p.stem != "__init__"]
    code = (f"import sys, nmtkit.cli, {', '.join(names)}; "
            "print(sorted(m for m in ('torch', 'datasets', 'sacrebleu') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
