"""The promises of the README and docs/: a landing page, links that lead somewhere, a command reference that
is the command line's own, dependency floors as pyproject.toml declares them, and the checker of transcripts."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
REGENERATE = "python -m typer nmtkit.cli utils docs --name nmtkit --output docs/commands.md"


def _checker():
    spec = importlib.util.spec_from_file_location("check_examples", ROOT / "docs" / "check_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").split("\n")
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/"
    for section in ("## Quick start", "## Commands", "## Documentation", "## Versions"):
        assert section in lines


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)}: the link {target} leads nowhere"


def test_the_command_reference_is_what_the_command_line_says(tmp_path):
    out = tmp_path / "commands.md"
    subprocess.run([sys.executable, "-m", "typer", "nmtkit.cli", "utils", "docs", "--name", "nmtkit",
                    "--output", str(out)], check=True, capture_output=True, cwd=ROOT)
    stored = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == stored, f"docs/commands.md is out of date; run: {REGENERATE}"


def test_every_command_is_in_the_readme_table():
    from nmtkit.cli import app
    import typer

    commands = set(typer.main.get_command(app).commands)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Commands"):readme.index("## What it reaches")]
    listed = set(re.findall(r"^\| `([a-z-]+)`(?:, `([a-z-]+)`)?(?:, `([a-z-]+)`)?", table, re.M))
    assert commands == {name for row in listed for name in row if name}


def _floors() -> dict[str, str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    floors = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_-]+)>=([0-9.]+)(;.*)?", requirement)
        assert match, f"pyproject.toml: {requirement!r} is not NAME>=FLOOR"
        floors[match.group(1).lower()] = match.group(2)
    return floors


def _release(version: str) -> tuple[int, ...]:
    parts = [int(part) for part in re.match(r"[0-9.]*[0-9]", version).group(0).split(".")[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def test_the_readme_names_the_floors_pyproject_declares():
    """The README's table of what CI tests lists each dependency at the floor pyproject.toml declares."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.split("\n") if "at its floor" in line)
    named = {name: _release(v) for name, v in re.findall(r"([a-z0-9-]+) ([0-9][0-9.]*)", row.split("lowest-direct")[1])}
    declared = {name: _release(v) for name, v in _floors().items() if name not in ("tomli", "hypothesis")}
    assert named == declared


def test_floors_are_installed_where_ci_installs_them():
    """In CI's floors job (NMTKIT_FLOORS=1) every dependency is exactly at its declared floor."""
    import os
    from importlib.metadata import version

    if os.environ.get("NMTKIT_FLOORS") != "1":
        pytest.skip("not the floors job (.ci/run sets NMTKIT_FLOORS=1 there)")
    for name, floor in _floors().items():
        if name == "tomli" and sys.version_info >= (3, 11):
            continue
        assert _release(version(name)) == _release(floor), f"{name} {version(name)} is not its floor {floor}"


def test_the_checker_runs_a_transcript_and_finds_what_it_does_not_print(tmp_path, capsys):
    checker = _checker()
    page = tmp_path / "page.md"
    page.write_text(
        "```console\n$ printf 'one\\ntwo  words\\nthree\\n'\none\ntwo words\n```\n\n"
        "```console\n$ echo took 12 s; echo done\ntook … s\n...\ndone\n```\n\n"
        "<!-- needs: checkpoints/no-such-run -->\n```console\n$ false\n```\n\n"
        "```console\n$ echo an answer\na different answer\n```\n\n"
        "```console\n$ echo printed; exit 3\nprinted\n```\n\n"
        "```console\n$ echo 'error: bad.txt:2: no'; exit 1\nerror: bad.txt:2: no\n```\n",
        encoding="utf-8")
    blocks = checker.transcripts(page)
    assert [len(b.steps) for b in blocks] == [1] * 6
    assert blocks[0].steps[0].expected == ["one", "two words"]
    assert blocks[2].needs == ["checkpoints/no-such-run"]
    assert checker.main([str(page)]) == 1
    out = capsys.readouterr().out
    assert "does not print: 'a different answer'" in out
    assert "exited 3" in out
    assert "skip" in out and "needs checkpoints/no-such-run" in out
    assert "6 transcript(s) run" not in out and "5 transcript(s) run, 2 failed, 1 skipped" in out


def test_the_checker_reports_other_figures_when_asked(tmp_path, capsys):
    checker = _checker()
    page = tmp_path / "page.md"
    page.write_text("```console\n$ echo 'BLEU 95.31, chrf 96.5'\nBLEU 95.69, chrf 96.5\n```\n", encoding="utf-8")
    assert checker.main([str(page)]) == 1  # exact by default
    assert checker.main([str(page), "--figures", "report"]) == 0
    assert "other figures than: 'BLEU 95.69, chrf 96.5'" in capsys.readouterr().out
    page.write_text("```console\n$ echo 'chrF 95.31'\nBLEU 95.31\n```\n", encoding="utf-8")
    assert checker.main([str(page), "--figures", "report"]) == 1  # the words must still be there


def test_the_checker_joins_continued_lines(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```console\n$ echo a \\\n    b\na b\n```\n", encoding="utf-8")
    (block,) = _checker().transcripts(page)
    assert block.steps[0].command == "echo a \\\n    b"
    assert _checker().main([str(page)]) == 0
