"""The README stays short, and every relative link in it and in docs/ points to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 300

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)  # fenced code blocks: their text is not markdown
_LINK = re.compile(r"\]\(([^)\s]+)\)")  # the target of [text](target) and ![alt](target)
# Words about how files reach one particular machine: no user's concern, so no page's.
_MACHINE_WORDS = re.compile(r"64 MiB|gpu_ferry|\bdevice calls?\b|\blent\b", re.I)


def relative_links(markdown: str) -> list[str]:
    """The link targets of `markdown` that are files of this repository: no URL, no bare #anchor,
    nothing inside a fenced code block; a target's #anchor is dropped."""
    targets = _LINK.findall(_FENCE.sub("", markdown))
    files = [t.split("#", 1)[0] for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]
    return [f for f in files if f]


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move the depth to docs/"


def test_relative_links_finds_what_a_reader_follows() -> None:
    sample = (
        "See [a](docs/a.md#part), ![b](../b.png), [c](https://x.org/c.md), [d](#top),\n"
        "```\n[e](inside/code.md)\n```\n[f](mailto:x@y.z) [g](g.md)\n"
    )
    assert relative_links(sample) == ["docs/a.md", "../b.png", "g.md"]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    links = relative_links(page.read_text(encoding="utf-8"))
    missing = [link for link in links if not (page.parent / link).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to files that do not exist: {missing}"


def test_readme_links_every_docs_page() -> None:
    linked = {(REPO / link).resolve() for link in relative_links(README.read_text(encoding="utf-8"))}
    # docs/_*.md are holding texts waiting to be merged into other pages, not pages of their own
    unlinked = [p.name for p in DOCS.glob("*.md") if not p.name.startswith("_") and p.resolve() not in linked]
    assert not unlinked, f"README.md does not link these docs pages: {unlinked}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_page_speaks_of_how_files_reach_one_machine(page: Path) -> None:
    found = _MACHINE_WORDS.findall(page.read_text(encoding="utf-8"))
    assert not found, f"{page.relative_to(REPO)} speaks of one machine's transfer limits: {found}"
