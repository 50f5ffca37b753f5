"""The README and docs/ stay usable: no placeholders or references to a document the repository lacks, a
README a new user can read, links that resolve, every command shown with an example, the documentation
site's navigation covering every page, and the GPU suite's help written for any GPU machine."""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import typer

from fast3d_cli.cli.app import app
from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
USER_DOCS = [README, *PAGES]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
PLACEHOLDER = re.compile(r"\bMEASURE_\w*|\bTODO\b|\bFIXME\b|\bTBD\b|\bXXX\b")
SPEC_REFERENCE = re.compile(r"\bspec\s*§|§\s*\d")


def prose(text: str) -> str:
    """Markdown without fenced code blocks and code spans (where link syntax is not a link)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def code_blocks(text: str) -> Iterator[str]:
    for match in FENCE.finditer(text):
        yield match.group(0)


def code_lines(path: Path = README) -> list[str]:
    blocks = code_blocks(path.read_text(encoding="utf-8"))
    return [line.strip() for block in blocks for line in block.splitlines()]


def relative_links(path: Path) -> Iterator[str]:
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same page
        yield target


@cache
def root_command():
    return typer.main.get_command(app)


def command_paths() -> list[str]:
    """Every command of the Typer app, as typed: 'extract', 'config show', 'sample build-world', ..."""

    def walk(command, prefix: list[str]) -> Iterator[str]:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*prefix, name])
        else:
            yield " ".join(prefix)

    return list(walk(root_command(), []))


def test_docs_has_pages() -> None:
    assert (DOCS / "index.md").is_file() and len(PAGES) > 5


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_placeholders_or_spec_references(path: Path) -> None:
    """User-facing text states its rules; it never points at a specification the repository does not hold,
    and holds no unfilled placeholder."""
    text = path.read_text(encoding="utf-8")
    assert not PLACEHOLDER.findall(text), PLACEHOLDER.findall(text)
    spec_lines = [line for line in text.splitlines() if SPEC_REFERENCE.search(line)]
    assert not spec_lines, spec_lines


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in relative_links(path):
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        if not resolved.exists() or REPO.resolve() not in resolved.parents:
            broken.append(target)
    assert not broken, f"{path.name}: links to missing files: {broken}"


def test_link_parser_finds_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "[a](docs/x.md#part) ![b](img.png) [c](https://example.org) [d](#here)\n"
        "`[e](not-a-link.md)`\n```bash\n[f](also-not.md)\n```\n",
        encoding="utf-8",
    )
    assert list(relative_links(page)) == ["docs/x.md#part", "img.png"]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 320, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_readme_has_the_test_command_ci_runs() -> None:
    """CI runs "the README's test command": it is in a README code block, and .ci/run runs it as written."""
    commands = [line.split("#", 1)[0].strip() for line in code_lines()]
    assert "pytest -q" in commands
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert "pytest -q" in ci


def test_readme_shows_every_command_with_an_example() -> None:
    """Every registered command appears in a README code block as a command line, 'fast3d NAME ...'."""
    lines = code_lines()
    commands = command_paths()
    assert {"extract", "eval", "config show", "sample build-world"} <= set(commands)
    shown = [name for name in commands if any(re.match(rf"fast3d {re.escape(name)}(\s|$)", s) for s in lines)]
    missing = sorted(set(commands) - set(shown))
    assert not missing, f"README.md has no example of: {missing}"


def command_lines(path: Path) -> list[str]:
    """The one-line `fast3d ...` command lines of a page's code blocks (not multi-line ones)."""
    return [line for line in code_lines(path) if line.startswith("fast3d ") and not line.endswith("\\")]


def parse_command_line(line: str) -> None:
    """Parse ``line`` as the fast3d app would (options, types, choices), without running the command."""
    args = shlex.split(line.split(" | ", 1)[0], comments=True)[1:]
    command = root_command()
    context = command.make_context("fast3d", list(args))
    while hasattr(command, "commands"):  # a group: its first argument names the sub-command
        name, command, args = command.resolve_command(context, args)
        context = command.make_context(name, args, parent=context)


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_examples_parse(path: Path) -> None:
    """Every example names options that exist, with values the command accepts."""
    for line in command_lines(path):
        if line.split()[1] != "--version":
            parse_command_line(line)


def test_parse_refuses_wrong_examples() -> None:
    assert len(command_lines(README)) > 10
    for wrong in ("fast3d eval --no-such-option 1", "fast3d eval --limit many", "fast3d sample no-such"):
        with pytest.raises(typer.TyperException):  # the parser's usage errors
            parse_command_line(wrong)


def test_command_help_has_no_spec_references() -> None:
    """--help is user-facing text too: each command's and each option's help states its rule."""

    def helps(command) -> Iterator[str]:
        yield command.help or ""
        yield from (getattr(param, "help", None) or "" for param in command.params)
        for sub in getattr(command, "commands", {}).values():
            yield from helps(sub)

    texts = list(helps(root_command()))
    assert any("pruning ratio" in text for text in texts)
    assert not [text for text in texts if SPEC_REFERENCE.search(text)]


def test_site_navigation_covers_every_page() -> None:
    """mkdocs.yml's nav names every docs/*.md page, and every page it names exists."""
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(entries) -> Iterator[str]:
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from pages(value) if isinstance(value, list) else [value]

    named = set(pages(config["nav"]))
    assert named == {p.name for p in PAGES}


def test_gpu_suite_help_is_for_any_gpu_machine() -> None:
    """The suite's --help (its module docstring) tells any user how to run it, not one lab's machine."""
    source = (REPO / "benchmarks" / "gpu_suite.py").read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source)) or ""
    for phrase in ("carry", "$OUT", "device tool", "device notes", "the GPU machine", "the GPU image"):
        assert phrase not in doc, phrase
    assert "python benchmarks/gpu_suite.py --out-dir" in doc
    assert "pip install" in doc
