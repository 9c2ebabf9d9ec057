"""The code cites docs/providers.md by heading anchors that exist in it."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "providers.md"
CODE = [
    path
    for folder in ("receiver", "tests", "bench", "scripts")
    for path in sorted((ROOT / folder).rglob("*"))
    if path.is_file() and (path.suffix == ".py" or folder == "scripts") and path != Path(__file__).resolve()
]
MENTION = re.compile(r"(?P<prefix>docs/)?providers\.md(?:#(?P<anchor>[\w-]+))?")
NUMBERED = re.compile(r"§\s*\d[\d.-]*")  # the old numbered sections, gone since headings are named
HEADING = re.compile(r"#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
LOCAL_LINK = re.compile(r"\]\(#(?P<anchor>[\w-]+)\)")


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def heading_anchors(markdown: str) -> list[str]:
    """The anchor of every heading outside fenced code, in order."""
    anchors, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            anchors.append(slug(match["title"]))
    return anchors


def bad_citations(text: str, anchors: set[str]) -> list[str]:
    """Mentions of providers.md that are not `docs/providers.md#<an existing anchor>`, and `§n` references."""
    bad = [
        match[0]
        for match in MENTION.finditer(text)
        if match["prefix"] is None or match["anchor"] is None or match["anchor"] not in anchors
    ]
    return bad + [match[0] for match in NUMBERED.finditer(text)]


def test_slug_is_githubs_anchor() -> None:
    """Headings become GitHub's anchors: commas and parentheses dropped, spaces hyphens, case folded."""
    assert slug("WaveSpeed polling, statuses and errors") == "wavespeed-polling-statuses-and-errors"
    assert slug("fal queue API") == "fal-queue-api"
    assert slug("Result hosts (D, S)") == "result-hosts-d-s"


def test_bad_citations_are_found() -> None:
    """A missing anchor, no anchor, no `docs/` prefix and a numbered section are each reported."""
    text = (
        "ok docs/providers.md#fal-webhooks; gone docs/providers.md#fal-webhook; bare docs/providers.md; "
        "unprefixed providers.md#fal-webhooks; old (providers.md §2.2) and (§5)"
    )
    assert bad_citations(text, {"fal-webhooks"}) == [
        "docs/providers.md#fal-webhook",
        "docs/providers.md",
        "providers.md#fal-webhooks",
        "providers.md",
        "§2.2",
        "§5",
    ]


def test_headings_have_distinct_anchors() -> None:
    """No two headings share an anchor (GitHub would number the second, and a citation would miss it)."""
    repeated = [anchor for anchor, count in Counter(heading_anchors(DOC.read_text())).items() if count > 1]
    assert repeated == []


def test_links_inside_the_document_resolve() -> None:
    """Every `](#anchor)` link in docs/providers.md names one of its headings."""
    text = DOC.read_text()
    anchors = set(heading_anchors(text))
    assert [m["anchor"] for m in LOCAL_LINK.finditer(text) if m["anchor"] not in anchors] == []


def test_code_cites_existing_headings() -> None:
    """Every citation of docs/providers.md in receiver/, tests/, bench/ and scripts/ names a heading it has."""
    anchors = set(heading_anchors(DOC.read_text()))
    bad = {str(path.relative_to(ROOT)): bad_citations(path.read_text(errors="replace"), anchors) for path in CODE}
    assert {path: citations for path, citations in bad.items() if citations} == {}


def test_the_code_does_cite_the_document() -> None:
    """The scan sees the citations (so an empty scan cannot pass for a clean one)."""
    cited = {m["anchor"] for path in CODE for m in MENTION.finditer(path.read_text(errors="replace"))}
    assert {"fal-webhook-signature", "wavespeed-webhooks", "modelverse-answers-and-errors"} <= cited
