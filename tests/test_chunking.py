import re
from pathlib import Path

from valign_edge.documents.chunking import approx_tokens, chunk_text
from valign_edge.documents.ingest import read_document

DATA = Path(__file__).resolve().parent.parent / "valign_edge" / "data"
SAMPLE = DATA / "code_of_conduct.md"
UDHR = DATA / "udhr.txt"  # shipped with the package (the UDHR probe set's document)


def _covered(text, chunks):
    """Every non-space character of the text lies in some chunk."""
    mask = [False] * len(text)
    for c in chunks:
        for i in range(c.start, c.end):
            mask[i] = True
    return all(m or ch.isspace() for m, ch in zip(mask, text))


def test_spans_index_the_text_and_cover_it():
    text = read_document(SAMPLE).text
    chunks = chunk_text(text, 200, 20)
    assert chunks
    for c in chunks:
        assert text[c.start:c.end] == c.text
    assert _covered(text, chunks)


def test_ids_are_stable_and_unique():
    text = read_document(SAMPLE).text
    a = [c.id for c in chunk_text(text)]
    b = [c.id for c in chunk_text(text)]
    assert a == b
    assert len(set(a)) == len(a)
    changed = [c.id for c in chunk_text(text.replace("Harassment", "Abuse"))]
    assert changed[0] == a[0] and changed != a  # only chunks whose text changed get new ids


def test_code_of_conduct_follows_sections():
    chunks = chunk_text(read_document(SAMPLE).text)
    headings = [c.heading for c in chunks]
    for n in range(1, 9):
        assert any(h.startswith(f"{n}.") for h in headings), headings
    for c in chunks:
        assert len(re.findall(r"^## \d\.", c.text, re.M)) <= 1  # never two sections in one chunk


def test_udhr_chunks_follow_articles():
    chunks = chunk_text(read_document(UDHR).text)
    articles = [c for c in chunks if c.heading.startswith("Article")]
    assert {c.heading for c in articles} == {f"Article {n}" for n in range(1, 31)}
    for c in articles:
        assert c.text.startswith(c.heading)


def test_long_section_is_split_within_budget_with_overlap():
    sentences = " ".join(f"Rule {i}: every member must respect rule number {i} at all times." for i in range(80))
    text = f"# Rules\n\n{sentences}\n"
    chunks = chunk_text(text, 120, 24)
    assert len(chunks) > 3
    for c in chunks:
        assert approx_tokens(c.text) <= 120 + 20  # one sentence of slack at most
        assert c.heading == "Rules"
    assert chunks[1].start < chunks[0].end  # consecutive pieces overlap
    assert _covered(text, chunks)


def test_custom_token_counter_is_used():
    text = "# A\n\n" + "word " * 300
    calls = []

    def count(s):
        calls.append(s)
        return len(s.split())

    chunks = chunk_text(text, 50, 0, count)
    assert calls and all(len(c.text.split()) <= 50 for c in chunks)
