"""The documentation is the repository's own, and every citation of it finds what it names.

* no file of the repository points outside it: no path into a workspace folder beside the
  checkout or an absolute path of the machine it was written on, and no upper-case document
  name (such as ``README.md``) that is not a file of the repository;
* every ``docs/<page>.md §N`` citation (in code, help texts, tests, notebooks, examples, the
  READMEs and docs/ itself; ranges ``§3–§6`` and lists ``§3, §6`` included) names a page that
  exists and a heading ``§N`` in it, and so does every ``[page](page.md) §N`` in docs/;
* every relative link in docs/*.md and the READMEs resolves, an ``#anchor`` to a heading;
* docs/README.md links every page; the prompt texts docs/ quotes verbatim are the package's.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

#: what is scanned: the code, its tests and every text that ships or documents it
SCANNED_DIRS = ("mechintro", "circuits", "tests", "benchmarks", "examples", "notebooks", "docs")
SCANNED_FILES = ("README.md", "pyproject.toml", ".pre-commit-config.yaml", ".ci/run")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".json", ".ipynb", ".txt", ".yaml", ".yml", ".jinja"}
SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints", "weights"}  # weights: tokenizers, configs

#: a path into a folder beside the checkout, or an absolute path under the workspace root
OUTSIDE = re.compile(r"\.\.[/\\]+(?:\.\.[/\\]+)*shared\b|(?<![\w.-])/wor[k]/")
#: an upper-case document name, with the folders written before it
DOC_NAME = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*[A-Z][A-Z0-9_]*\.md)\b")
SECTION = r"§\d+(?:\s*[–-]\s*§?\d+)?"
#: a page of docs/ and its sections: §3, a range §3–§5, a list §3, §6 and §8
CITATION = re.compile(rf"docs/([\w-]+)\.md((?:\s*{SECTION})(?:\s*(?:,|and)\s*{SECTION})*)?")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
#: in docs/, a link to a page followed by its sections
LINKED_SECTION = re.compile(rf"\]\(([\w-]+\.md)\)((?:\s*{SECTION})(?:\s*(?:,|and)\s*{SECTION})*)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _scanned() -> list[Path]:
    out = [ROOT / f for f in SCANNED_FILES if (ROOT / f).is_file()]
    for d in SCANNED_DIRS:
        for p in sorted((ROOT / d).rglob("*")):
            rel = p.relative_to(ROOT)
            if not p.is_file() or SKIP_PARTS & set(rel.parts) or p.suffix not in TEXT_SUFFIXES:
                continue
            if p.stat().st_size < 2_000_000:
                out.append(p)
    return out


FILES = _scanned()


def _text(path: Path) -> str:
    return path.read_text("utf-8", errors="replace")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _repo_md_names() -> set[str]:
    """Every markdown file of the repository, by path from the root and by file name."""
    names: set[str] = set()
    for d in (ROOT, *(ROOT / d for d in SCANNED_DIRS)):
        for p in d.glob("*.md") if d == ROOT else d.rglob("*.md"):
            names |= {_rel(p), p.name}
    return names


def _numbers(spec: str) -> set[int]:
    """``§3–§5, §8`` -> {3, 4, 5, 8}."""
    out: set[int] = set()
    for a, b in re.findall(r"§(\d+)(?:\s*[–-]\s*§?(\d+))?", spec):
        out |= set(range(int(a), int(b or a) + 1))
    return out


def _headings(text: str) -> list[str]:
    return HEADING.findall(FENCE.sub("", text))


def _sections(page: Path) -> set[int]:
    """The ``§N`` numbers of a page's headings (``## §3. Title``)."""
    return {int(m) for h in _headings(_text(page)) for m in re.findall(r"^§(\d+)\b", h)}


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*?|__", "", heading).strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in ("L", "N"))
    return kept.replace(" ", "-")


def test_the_docs_pages_exist_and_the_index_links_each():
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    for name in (
        "README.md",
        "protocols.md",
        "metrics.md",
        "organism.md",
        "analysis.md",
        "architecture.md",
        "figures.md",
    ):
        assert name in pages, f"docs/{name} is missing"
    index = {m.split("#")[0] for m in LINK.findall(_text(DOCS / "README.md"))}
    unlinked = [p for p in pages if p != "README.md" and p not in index]
    assert not unlinked, f"docs/README.md does not link {unlinked}"


def test_nothing_points_outside_the_repository():
    names = _repo_md_names()
    bad: list[str] = []
    for path in FILES:
        text = _text(path)
        for m in OUTSIDE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            bad.append(f"{_rel(path)}:{line}: a path outside the repository ({m.group(0)!r})")
        for m in DOC_NAME.finditer(text):
            name = m.group(1)
            here = (path.parent / name).resolve()
            if name in names or Path(name).name in names or here.is_file():
                continue
            line = text.count("\n", 0, m.start()) + 1
            bad.append(f"{_rel(path)}:{line}: {name} is not a file of the repository")
    assert not bad, "\n".join(bad)


def test_every_docs_citation_names_an_existing_page_and_section():
    cited = 0
    bad: list[str] = []
    for path in FILES:
        text = _text(path)
        found = [(m.start(), m.group(1) + ".md", m.group(2)) for m in CITATION.finditer(text)]
        if path.parent == DOCS:
            found += [(m.start(), m.group(1), m.group(2)) for m in LINKED_SECTION.finditer(text)]
        for start, page, spec in found:
            cited += 1
            where = f"{_rel(path)}:{text.count(chr(10), 0, start) + 1}"
            target = DOCS / page
            if not target.is_file():
                bad.append(f"{where}: docs/{page} does not exist")
                continue
            missing = _numbers(spec or "") - _sections(target)
            if missing:
                bad.append(f"{where}: docs/{page} has no section {sorted(missing)}")
    assert cited > 30, f"only {cited} citations found: is the pattern still right?"
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_a_pages_sections_are_unique_and_its_own_references_exist(page):
    text = _text(DOCS / page)
    numbers = [int(m) for h in _headings(text) for m in re.findall(r"^§(\d+)\b", h)]
    assert len(numbers) == len(set(numbers)), f"docs/{page}: a section number is used twice"
    if not numbers:
        return
    # a bare "§N" (not after a page name or link) refers to this page
    prose = FENCE.sub("", text)
    prose = CITATION.sub("", LINKED_SECTION.sub("", prose))
    missing = _numbers(" ".join(re.findall(SECTION, prose))) - set(numbers)
    assert not missing, f"docs/{page} refers to its own sections {sorted(missing)}, not there"


@pytest.mark.parametrize(
    "page",
    [
        *sorted(p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md")),
        "README.md",
        "benchmarks/README.md",
    ],
)
def test_every_relative_link_resolves(page):
    path = ROOT / page
    text = FENCE.sub("", _text(path))
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or ROOT not in (dest, *dest.parents):
            bad.append(f"{target}: no such file in the repository")
            continue
        if anchor and dest.suffix == ".md":
            slugs = {_slug(h) for h in _headings(_text(dest))}
            if anchor not in slugs:
                bad.append(f"{target}: no heading with the anchor #{anchor}")
    assert not bad, f"{page}: " + "; ".join(bad)


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_the_texts_docs_quote_verbatim_are_the_packages():
    from mechintro.experiments.protocols import detection, noise
    from mechintro.experiments.protocols.control import CONDITIONS
    from mechintro.experiments.protocols.intention import CONTEXT, FOLLOW_UP
    from mechintro.experiments.protocols.variants import NEUTRAL_QUESTION, UNPROMPTED_QUESTION
    from mechintro.organism.corpus import NO_DETECTION, YES_DETECTION
    from mechintro.training.bias import BIAS_NO, BIAS_YES
    from mechintro.training.lora import FONSECA_NO, FONSECA_YES

    protocols = _squash(_text(DOCS / "protocols.md"))
    quoted = [
        detection.PREAMBLE,
        detection.TRIAL_QUESTION,
        detection.FORCED_PREFILL,
        noise.SYSTEM,
        f"{noise.INTROSPECTION_QUESTION} {noise.ANSWER_FORMAT}",
        f"{noise.CONTROL_QUESTION} {noise.ANSWER_FORMAT}",
        CONTEXT,
        FOLLOW_UP,
        CONDITIONS["think"],
        CONDITIONS["dont-think"],
        CONDITIONS["baseline"],
        UNPROMPTED_QUESTION,
        NEUTRAL_QUESTION,
        FONSECA_YES,
        FONSECA_NO,
        BIAS_YES,
        BIAS_NO,
    ]
    missing = [t for t in quoted if _squash(t) not in protocols]
    assert not missing, f"docs/protocols.md does not quote these as the package has them: {missing}"
    organism = _squash(_text(DOCS / "organism.md"))
    assert YES_DETECTION in organism and NO_DETECTION in organism
