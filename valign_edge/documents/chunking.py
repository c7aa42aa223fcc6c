"""Heading-aware, token-bounded chunks with stable ids and character spans.

A chunk never crosses a heading (an article of a charter, a section of a policy); a section
longer than ``max_tokens`` is split at paragraph, then sentence, boundaries with overlap.
Spans index the normalized document text, so ``text[start:end] == chunk.text``.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Callable

from valign_edge.config import GenerateConfig  # the one source of the chunk size and overlap defaults

TokenCounter = Callable[[str], int]

HEADING = re.compile(
    r"^(#{1,6}\s+\S.*"  # Markdown
    r"|(?:article|section|chapter|part|principle|rule|clause)\s+[\w.\-]+\b.{0,60}"  # Article 12, Section 3.1 ...
    r"|\d{1,2}(?:\.\d{1,2})*\.?\s+[A-Z][^.!?]{0,60}"  # 3. Respect at work
    r"|[A-Z][A-Z0-9 ,'&\-]{3,60}"  # ALL-CAPS headings
    r"|preamble)$",
    re.IGNORECASE,
)


@dataclass
class Chunk:
    id: str
    start: int
    end: int
    heading: str
    text: str
    pages: list[int] | None = None  # [first, last] page of a PDF; None for documents without pages

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.pages is None:
            del out["pages"]
        return out


def approx_tokens(text: str) -> int:
    return max(1, int(len(re.findall(r"\w+|[^\w\s]", text)) * 1.15))


def _is_heading(line: str, prev_blank: bool) -> bool:
    line = line.strip()
    if not line or len(line) > 80:
        return False
    if line.startswith("#"):
        return True
    # Numbered or ALL-CAPS lines count as headings only when they start a block and read like a title.
    return bool(HEADING.match(line)) and (prev_blank or line.lower().startswith(("article", "section", "chapter", "preamble"))) and not line.endswith((",", ";"))


def _sections(text: str) -> list[tuple[str, int, int]]:
    """(heading, start, end) of each section; the heading line is part of the section."""
    starts: list[tuple[int, str]] = []
    pos, prev_blank = 0, True
    for line in text.splitlines(keepends=True):
        if _is_heading(line, prev_blank):
            starts.append((pos, line.strip().lstrip("#").strip()))
        prev_blank = not line.strip()
        pos += len(line)
    if not starts or starts[0][0] > 0:
        starts.insert(0, (0, ""))
    sections: list[tuple[str, int, int]] = []
    carry: tuple[str, int] | None = None  # a title with no body joins the section after it
    for i, (start, heading) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        body = text[start:end].strip()
        if not body:
            continue
        if carry is not None:
            start, heading = carry[1], heading or carry[0]
            carry = None
        if "\n" not in body and i + 1 < len(starts):
            carry = (heading, start)
            continue
        sections.append((heading, start, end))
    if carry is not None:
        sections.append((carry[0], carry[1], len(text)))
    return sections


def _pieces(text: str, start: int, end: int, max_tokens: int, count: TokenCounter) -> list[tuple[int, int]]:
    """Split [start, end) into sentence-ish pieces (paragraph breaks and sentence ends);
    a sentence longer than the budget is cut between words."""
    cuts = [start]
    for m in re.finditer(r"\n+|(?<=[.!?;:])\s+", text[start:end]):
        cuts.append(start + m.end())
    cuts.append(end)
    pieces = []
    for a, b in zip(cuts, cuts[1:]):
        if b <= a:
            continue
        if count(text[a:b]) <= max_tokens:
            pieces.append((a, b))
            continue
        piece_start = a
        for m in re.finditer(r"\S+\s*", text[a:b]):
            if count(text[piece_start:a + m.end()]) > max_tokens and a + m.start() > piece_start:
                pieces.append((piece_start, a + m.start()))
                piece_start = a + m.start()
        pieces.append((piece_start, b))
    return pieces


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def page_range(page_starts: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """[first, last] page number of the span [start, end) given (offset, page number) of each page."""
    offsets = [offset for offset, _ in page_starts]
    first = page_starts[max(0, bisect.bisect_right(offsets, start) - 1)][1]
    last = page_starts[max(0, bisect.bisect_right(offsets, max(start, end - 1)) - 1)][1]
    return [first, last]


def chunk_text(text: str, max_tokens: int = GenerateConfig.chunk_tokens,
               overlap_tokens: int = GenerateConfig.chunk_overlap,
               count_tokens: TokenCounter = approx_tokens,
               page_starts: list[tuple[int, int]] | None = None) -> list[Chunk]:
    spans: list[tuple[str, int, int]] = []
    for heading, s_start, s_end in _sections(text):
        if count_tokens(text[s_start:s_end]) <= max_tokens:
            spans.append((heading, s_start, s_end))
            continue
        pieces = _pieces(text, s_start, s_end, max_tokens, count_tokens)
        i = 0
        while i < len(pieces):
            j, size = i, 0
            while j < len(pieces):
                n = count_tokens(text[pieces[j][0]:pieces[j][1]])
                if j > i and size + n > max_tokens:
                    break
                size += n
                j += 1
            spans.append((heading, pieces[i][0], pieces[j - 1][1]))
            if j >= len(pieces):
                break
            # Step back over whole pieces worth at most ``overlap_tokens`` so context carries over.
            back, k = 0, j
            while k - 1 > i and back + count_tokens(text[pieces[k - 1][0]:pieces[k - 1][1]]) <= overlap_tokens:
                k -= 1
                back += count_tokens(text[pieces[k][0]:pieces[k][1]])
            i = k
    chunks, seen = [], set()
    for heading, start, end in spans:
        start, end = _strip_span(text, start, end)
        if end <= start:
            continue
        body = text[start:end]
        # Ids depend only on the text and its position: same document, same ids.
        base = hashlib.sha1(f"{start}:{body}".encode()).hexdigest()[:10]
        cid = f"c{len(chunks):04d}-{base}"
        assert cid not in seen
        seen.add(cid)
        chunks.append(Chunk(cid, start, end, heading, body,
                            page_range(page_starts, start, end) if page_starts else None))
    return chunks
