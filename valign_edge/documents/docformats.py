"""PDF and Word-processor documents to text whose headings are Markdown headings, so chunking follows
the document's sections as it does for Markdown and HTML.

- PDF (text layer only, no OCR) through pypdf: headings come from the outline (bookmarks), from
  lines set in a larger font than the body, and from short numbered lines that start a block;
  running headers, footers, page numbers and table-of-contents leader lines are dropped. Each page
  is normalized on its own and pages are joined by a blank line, so the offset where every page
  starts in the normalized text is exact.
- DOCX through python-docx: heading styles (and outline levels) become headings, list paragraphs
  list items, table rows lines.
- ODT (OpenDocument text, LibreOffice's format) through odfdo, the same way: ``text:h`` headings at
  their outline level (and the Title style), list items, table rows; sections are read in place.

EPUB is not read: no library this project keeps reads it (ebooklib is AGPL-3.0); ingest says so.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from valign_edge.errors import UserError

NUMBERED = re.compile(r"^(?:\d{1,2}(?:\.\d{1,2})*\.?|(?:article|section|chapter|part)\s+[\w.]+)\s+\S", re.I)
BULLET = re.compile(r"^(?:[•◦▪\-–*]|\(?[a-z0-9]{1,3}[.)])\s")
TOC_LEADER = re.compile(r"(?:\.\s?){4,}\s*\d+$")
PAGE_NUMBER = re.compile(r"^(?:page\s*)?\d+(?:\s*(?:/|of)\s*\d+)?$|^[ivxlc]{1,6}$", re.I)


@dataclass
class Line:
    text: str
    size: float
    y: float
    bold: bool


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _page_lines(page) -> list[Line]:
    """The page's text lines in reading order (pypdf's), each with its font size, baseline and weight."""
    lines: list[Line] = []
    parts: list[str] = []
    sizes: Counter = Counter()
    state = {"y": None, "bold": 0}

    def flush() -> None:
        text = "".join(parts).strip()
        if text:
            lines.append(Line(text, sizes.most_common(1)[0][0], state["y"] or 0.0, state["bold"] * 2 > len(text)))
        parts.clear()
        sizes.clear()
        state.update(y=None, bold=0)

    def visit(text, cm, tm, font, size):
        if not text:
            return
        m2, m3 = tm[2] * cm[0] + tm[3] * cm[2], tm[2] * cm[1] + tm[3] * cm[3]
        y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
        eff = round((size or 0) * (math.hypot(m2, m3) or 1.0), 1)
        bold = "bold" in str((font or {}).get("/BaseFont", "")).lower()
        for i, piece in enumerate(text.split("\n")):
            if i:
                flush()
            if piece.strip():
                if state["y"] is None:
                    state["y"] = y
                parts.append(piece)
                sizes[eff] += len(piece.strip())
                state["bold"] += len(piece.strip()) if bold else 0
            elif piece:
                parts.append(piece)

    page.extract_text(visitor_text=visit)
    flush()
    return lines


def _outline(reader) -> dict[int, list[tuple[str, int]]]:
    """page index -> [(title key, level)] from the PDF's bookmarks."""
    out: dict[int, list[tuple[str, int]]] = {}

    def walk(items, level):
        for item in items:
            if isinstance(item, list):
                walk(item, level + 1)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # broken destinations are common; the bookmark is just skipped
                continue
            if page is not None and page >= 0 and item.title:
                out.setdefault(page, []).append((_key(item.title), min(level, 6)))

    try:
        walk(reader.outline, 1)
    except Exception:
        return {}
    return out


def _furniture(pages: list[list[Line]]) -> set[str]:
    """Keys of running headers and footers: lines repeated at the top or bottom of most pages."""
    if len(pages) < 3:
        return set()
    counts: Counter = Counter()
    for lines in pages:
        edge = {re.sub(r"\d+", "#", _key(line.text)) for line in lines[:2] + lines[-2:]}
        counts.update(k for k in edge if k)
    return {k for k, n in counts.items() if n >= max(3, 0.5 * len(pages))}


def _heading_levels(pages: list[list[Line]]) -> tuple[float, dict[float, int]]:
    """The body font size and a heading level for each larger size used by short lines."""
    weight: Counter = Counter()
    for lines in pages:
        for line in lines:
            weight[line.size] += len(line.text)
    body = weight.most_common(1)[0][0] if weight else 0.0
    larger = sorted({line.size for lines in pages for line in lines
                     if line.size >= body * 1.15 and len(line.text) <= 120 and re.search(r"[A-Za-z]", line.text)},
                    reverse=True)
    return body, {size: min(i + 1, 4) for i, size in enumerate(larger)}


def _page_text(lines: list[Line], page_no: int, body: float, levels: dict, outline: dict, furniture: set) -> str:
    bookmarks = list(outline.get(page_no, []))
    gaps = sorted(a.y - b.y for a, b in zip(lines, lines[1:]) if a.y - b.y > 0 and abs(a.size - body) < 0.5)
    line_gap = gaps[len(gaps) // 2] if gaps else body * 1.2
    widths = sorted(len(line.text) for line in lines if abs(line.size - body) < 0.5)
    full = widths[int(len(widths) * 0.8)] if widths else 80
    out: list[str] = []
    prev: Line | None = None
    for i, line in enumerate(lines):
        text = line.text
        edge = i < 2 or i >= len(lines) - 2
        if TOC_LEADER.search(text) or (edge and (re.sub(r"\d+", "#", _key(text)) in furniture or PAGE_NUMBER.match(text))):
            continue
        level = 0
        for j, (key, lvl) in enumerate(bookmarks):
            if key and (_key(text) == key or (len(_key(text)) >= 4 and key.endswith(_key(text)))):
                level = lvl
                del bookmarks[j]
                break
        starts_block = prev is None or prev.y - line.y > 1.45 * line_gap or prev.y < line.y or \
            prev.text.endswith((".", "!", "?", ":")) or out[-1] == "\n\n"
        if not level and line.size in levels and len(text) <= 120:
            level = levels[line.size]
        elif not level and NUMBERED.match(text) and len(text) <= 70 and starts_block and \
                not text.endswith((".", ",", ";", ":")) and (line.bold or len(text) < 0.7 * full):
            level = min(text.split()[0].rstrip(".").count(".") + 2, 5) if text[0].isdigit() else 2
        if level:
            out += ["\n\n", "#" * level + " " + text, "\n\n"]
            prev = None
            continue
        if prev is not None:
            if prev.y - line.y > 1.45 * line_gap or prev.y < line.y:
                out.append("\n\n")
            elif BULLET.match(text) or (prev.text.endswith((".", "!", "?", ":")) and len(prev.text) < 0.7 * full):
                out.append("\n")
            elif re.search(r"[a-z]-$", out[-1]) and text[:1].islower():
                out[-1] = out[-1][:-1]  # a word hyphenated across lines
            else:
                out.append(" ")
        out.append(text)
        prev = line
    return "".join(out)


def read_pdf(path: Path, normalize) -> tuple[str, list[tuple[int, int]]]:
    """(text, [(offset where a page starts, page number), ...]); one ``UserError`` line on any problem.
    ``normalize`` is ingest's text normalizer (passed in: ingest imports this module)."""
    try:
        from pypdf import PdfReader
    except ImportError:
        raise UserError("reading PDF documents needs pypdf; run: pip install pypdf") from None
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # it warns about every malformed object
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UserError(f"{path}: the PDF is protected by a password; save an unprotected copy first")
        pages = [_page_lines(page) for page in reader.pages]
        outline = _outline(reader)
    except UserError:
        raise
    except Exception as exc:  # pypdf raises many kinds of errors on damaged or unusual files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: cannot read the PDF ({detail})") from None
    if not pages:
        raise UserError(f"{path}: the PDF has no pages")
    words = sum(len(re.findall(r"\w+", line.text)) for lines in pages for line in lines)
    if words == 0:
        raise UserError(f"{path}: the PDF has no text layer (scanned pages?); valign-edge does no OCR, "
                        "so export it with its text or run OCR on it first")
    if words < 5:  # a text layer with a few words: a title page, not a scan
        raise UserError(f"{path} has too little text to learn values from ({words} words)")
    body, levels = _heading_levels(pages)
    furniture = _furniture(pages)
    text, starts = "", []
    for page_no, lines in enumerate(pages):
        page_text = normalize(_page_text(lines, page_no, body, levels, outline, furniture)).strip()
        if not page_text:
            continue
        if text:
            text += "\n\n"
        starts.append((len(text), page_no + 1))
        text += page_text
    return text + "\n", starts


def _docx_level(paragraph) -> int:
    """Heading level from the paragraph's style (or an outline level set on it or its style); 0 if none."""
    style = paragraph.style
    name = (style.name or "") if style is not None else ""
    if name.lower() == "title":
        return 1
    m = re.match(r"heading\s*(\d)", name, re.I)
    if m:
        return min(int(m.group(1)), 6)
    ns = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
    element = paragraph._p
    while style is not None:
        lvl = element.find(f"{ns}pPr/{ns}outlineLvl")
        if lvl is not None and lvl.get(f"{ns}val", "9").isdigit() and int(lvl.get(f"{ns}val")) < 9:
            return int(lvl.get(f"{ns}val")) + 1
        element, style = style.element, style.base_style
    return 0


def read_docx(path: Path) -> str:
    try:
        import docx
        from docx.table import Table
        from docx.text.paragraph import Paragraph
    except ImportError:
        raise UserError("reading Word documents needs python-docx; run: pip install python-docx") from None
    try:
        document = docx.Document(str(path))
        blocks: list[str] = []
        for element in document.element.body.iterchildren():
            tag = element.tag.rsplit("}", 1)[-1]
            if tag == "p":
                paragraph = Paragraph(element, document)
                text = paragraph.text.strip()
                if not text:
                    continue
                level = _docx_level(paragraph)
                style = (paragraph.style.name or "") if paragraph.style is not None else ""
                if level:
                    blocks.append("#" * level + " " + text.replace("\n", " "))
                elif style.lower().startswith("list"):
                    blocks.append("- " + text)
                else:
                    blocks.append(text)
            elif tag == "tbl":
                rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in Table(element, document).rows]
                blocks.append("\n".join(r for r in rows if r.strip(" |")))
    except Exception as exc:  # a damaged zip or XML
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: cannot read the Word document ({detail})") from None
    return _join(blocks)


def _join(blocks: list[str]) -> str:
    """Consecutive list items stay together; everything else is a paragraph of its own."""
    out = ""
    for i, block in enumerate(blocks):
        if i:
            out += "\n" if block.startswith("- ") and blocks[i - 1].startswith("- ") else "\n\n"
        out += block
    return out


ODT_SKIPPED = {"text:table-of-content", "text:alphabetical-index", "text:illustration-index", "text:sequence-decls",
               "text:variable-decls", "text:user-field-decls", "text:tracked-changes", "office:forms"}


def _odt_text(element) -> str:
    return " ".join(str(element).split())


def _odt_heading(element) -> str:
    level = str(element.get_attribute("text:outline-level") or "1")
    return "#" * min(int(level) if level.isdigit() else 1, 6) + " " + _odt_text(element)


def _odt_list(element, blocks: list[str]) -> None:
    """A list's items (nested lists flattened in order) as "- " blocks."""
    for item in element.children:
        for part in item.children:  # text:list-item or text:list-header
            if part.tag == "text:list":
                _odt_list(part, blocks)
            elif part.tag == "text:h":
                blocks.append(_odt_heading(part))
            elif _odt_text(part):
                blocks.append("- " + _odt_text(part))


def _odt_blocks(element, blocks: list[str]) -> None:
    """Headings, paragraphs, list items and table rows of an ODT body, in document order; sections and
    other containers are read in place, tables of contents and indexes skipped (they repeat headings)."""
    for child in element.children:
        tag, text = child.tag, _odt_text(child)
        if tag == "text:h" and text:
            blocks.append(_odt_heading(child))
        elif tag == "text:p" and text:
            blocks.append(("# " if (child.style or "").lower() == "title" else "") + text)
        elif tag == "text:list":
            _odt_list(child, blocks)
        elif tag == "table:table":
            rows = [[_odt_text(cell) for cell in row.get_cells()] for row in child.get_rows()]
            blocks += [" | ".join(r) for r in rows if any(r)]
        elif tag not in ODT_SKIPPED and tag not in ("text:h", "text:p") and child.children:
            _odt_blocks(child, blocks)


def read_odt(path: Path) -> str:
    try:
        from odfdo import Document
    except ImportError:
        raise UserError("reading OpenDocument text needs odfdo; run: pip install odfdo") from None
    try:
        document = Document(str(path))
        if document.get_type() != "text":
            raise UserError(f"{path}: an OpenDocument {document.get_type()}, not a text document (.odt)")
        blocks: list[str] = []
        _odt_blocks(document.body, blocks)
    except UserError:
        raise
    except Exception as exc:  # a damaged zip or XML
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: cannot read the OpenDocument text ({detail})") from None
    return _join(blocks)
