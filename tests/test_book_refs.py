"""The library cites the book; these tests keep every citation pointing at something that exists.

`sfs` docstrings say "Book eq. (3.4)" or 'Book ch. 5, sec. "Residual blocks"'. Equations are numbered
per chapter in the order their labels appear (MyST ``$$ ... $$ (label)``), chapters in the order of
the numbered part of ``_toc.yml``. A renamed section or a moved equation fails here, not in a reader's
head.
"""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EQ_LABEL = re.compile(r"^\$\$\s*\((eq-[\w-]+)\)\s*$|^:label:\s*(eq-[\w-]+)\s*$", re.M)
EQ_REF = re.compile(r"Book eqs?\.\s*((?:\(\d+\.\d+\)(?:\s*(?:,|-|and)\s*)?)+)")
SEC_REF = re.compile(r'Book ch(?:apter)?\.?\s*(\d+),\s*sec\.\s*"([^"]+)"')


def numbered_chapters() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    for part in toc.get("parts", []):
        if part.get("numbered"):
            return [ROOT / (c["file"] + ".md") for c in part["chapters"]]
    return []


def equations() -> dict[str, str]:
    """Map "N.M" -> label for every labelled equation of every numbered chapter."""
    found = {}
    for n, path in enumerate(numbered_chapters(), start=1):
        labels = [a or b for a, b in EQ_LABEL.findall(path.read_text())]
        for m, label in enumerate(labels, start=1):
            found[f"{n}.{m}"] = label
    return found


def headings(n: int) -> set[str]:
    path = numbered_chapters()[n - 1]
    return {h.strip() for h in re.findall(r"^#+\s+(.+)$", path.read_text(), re.M)}


def citations():
    for path in sorted((ROOT / "sfs").rglob("*.py")):
        text = path.read_text()
        for group in EQ_REF.findall(text):
            for num in re.findall(r"\((\d+\.\d+)\)", group):
                yield path.relative_to(ROOT), "eq", num
        for ch, sec in SEC_REF.findall(text):
            yield path.relative_to(ROOT), "sec", (int(ch), sec)


def test_chapters_in_toc_exist():
    for path in numbered_chapters():
        assert path.is_file(), f"_toc.yml lists {path}, which does not exist"


def test_equation_citations_resolve():
    eqs = equations()
    bad = [f"{p}: eq. ({num})" for p, kind, num in citations() if kind == "eq" and num not in eqs]
    assert not bad, "sfs cites equations the book does not have:\n" + "\n".join(sorted(set(bad)))


def test_section_citations_resolve():
    chapters = numbered_chapters()
    bad = []
    for p, kind, ref in citations():
        if kind != "sec":
            continue
        ch, sec = ref
        if ch > len(chapters) or not any(sec.lower() in h.lower() for h in headings(ch)):
            bad.append(f'{p}: ch. {ch}, sec. "{sec}"')
    assert not bad, "sfs cites sections the book does not have:\n" + "\n".join(sorted(set(bad)))


def test_the_parser_finds_labels(tmp_path):
    text = "$$\na = b\n$$ (eq-one)\n\n```{math}\n:label: eq-two\nc\n```\n"
    assert [a or b for a, b in EQ_LABEL.findall(text)] == ["eq-one", "eq-two"]
    refs = EQ_REF.findall('Book eqs. (3.3)-(3.5), (3.8); Book eq. (1.2)')
    assert [re.findall(r"\((\d+\.\d+)\)", g) for g in refs] == [["3.3", "3.5", "3.8"], ["1.2"]]
