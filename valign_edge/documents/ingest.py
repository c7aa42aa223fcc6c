"""Read a value document (.txt, .md, .html, .pdf, .docx, .odt) into normalized text, refusing what is not text."""

from __future__ import annotations

import hashlib
import html
import html.parser
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from valign_edge.errors import UserError
from valign_edge.files import read_regular

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text", ".rst", ""}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
MAX_BYTES = 64 * 1024 * 1024


@dataclass
class Document:
    path: Path
    text: str
    sha256: str
    # PDFs: (offset in ``text`` where a page starts, page number), so chunks can cite their pages.
    pages: list[tuple[int, int]] = field(default_factory=list)


def _decode(data: bytes, path: Path) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise UserError(f"{path}: not valid UTF-16 text") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Documents pasted together from several sources mix UTF-8 with Windows-1252 lines:
    # decode line by line before giving up.
    lines = []
    for raw in data.split(b"\n"):
        for encoding in ("utf-8", "cp1252"):
            try:
                lines.append(raw.decode(encoding))
                break
            except UnicodeDecodeError:
                continue
        else:
            raise UserError(f"{path}: cannot decode the text (not UTF-8, UTF-16 or Windows-1252)")
    return "\n".join(lines)


def _looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return False  # UTF-16 text; decoding checks it
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return control > max(8, len(sample) // 50)


class _HTMLText(html.parser.HTMLParser):
    """HTML to text that keeps headings as Markdown headings, so chunking can follow them."""

    BLOCK = {"p", "div", "li", "br", "tr", "section", "article", "blockquote", "pre", "ul", "ol", "table"}
    SKIP = {"script", "style", "head", "nav", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(source: str) -> str:
    parser = _HTMLText()
    parser.feed(source)
    return html.unescape("".join(parser.parts))


# Strings that chat templates and tokenizers treat as control tokens (<|im_start|>, <|endoftext|>,
# <s>, </s>, <start_of_turn>, [INST], <｜User｜>, ...). Inside a document they are content: a space
# after the opening bracket keeps them readable but stops any tokenizer from matching them as special
# tokens, in the teacher's prompts, the training data and chat alike, since all three start from here.
CONTROL_STRING = re.compile(r"<[|｜][^\s<>]{0,40}?[|｜]>|</?[A-Za-z][\w.\-]{0,30}>"
                            r"|\[/?(?:INST|SYS|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS|TOOL_CONTENT|THINK)\]")


def neutralize_control_strings(text: str) -> str:
    return CONTROL_STRING.sub(lambda m: m.group(0)[0] + " " + m.group(0)[1:], text)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    text = "".join(ch for ch in text if ch == "\n" or unicodedata.category(ch) != "Cc")
    text = "\n".join(re.sub(r" {2,}", " ", line).strip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return neutralize_control_strings(text.strip()) + "\n"


def read_document(path: str | Path) -> Document:
    """Read and normalize a document; every problem is a one-line ``UserError``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"document not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a document file (.txt, .md, .html, .pdf, .docx, .odt)")
    suffix = path.suffix.lower()
    if suffix in {".doc", ".rtf", ".pages", ".epub"}:
        raise UserError(f"{path}: {suffix} is not supported; save it as .docx, .odt, .pdf, .txt, .md or .html")
    data = read_regular(path, "document", MAX_BYTES)  # a FIFO, a device or a file over the limit is refused
    if not data.strip():
        raise UserError(f"{path} is empty")
    pages: list[tuple[int, int]] = []
    if suffix in (".pdf", ".docx", ".odt") or data.startswith(b"%PDF-"):
        from valign_edge.documents import docformats

        if data.startswith(b"%PDF-"):
            text, pages = docformats.read_pdf(path, normalize)  # normalized page by page: the page offsets hold
        elif data.startswith(b"PK"):
            text = normalize(docformats.read_odt(path) if suffix == ".odt" else docformats.read_docx(path))
        else:
            raise UserError(f"{path} is not a {suffix[1:].upper()} file (its content does not match the name)")
        if len(re.findall(r"\w+", text)) < 5:
            raise UserError(f"{path} has too little text to learn values from")
        return Document(path=path, text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), pages=pages)
    if _looks_binary(data):
        raise UserError(f"{path} looks like a binary file, not text")
    text = _decode(data, path)
    if suffix in HTML_SUFFIXES or (suffix not in TEXT_SUFFIXES and text.lstrip().lower().startswith(("<!doctype html", "<html"))):
        text = html_to_text(text)
    text = normalize(text)
    if len(re.findall(r"\w+", text)) < 5:
        raise UserError(f"{path} has too little text to learn values from")
    return Document(path=path, text=text, sha256=hashlib.sha256(text.encode()).hexdigest())


PAGES_FILE = "document.pages.json"


def save_page_starts(run_root: Path, text: str, pages: list[tuple[int, int]]) -> None:
    """Keep a PDF's page offsets beside the run's document (a resumed run has only document.txt)."""
    import json

    from valign_edge.files import atomic_write_text

    path = Path(run_root) / PAGES_FILE
    if pages:
        atomic_write_text(path, json.dumps({"document_sha256": hashlib.sha256(text.encode()).hexdigest(),
                                            "pages": [list(p) for p in pages]}))
    elif path.exists():
        path.unlink()


def load_page_starts(run_root: Path, text: str) -> list[tuple[int, int]] | None:
    """The page offsets saved for exactly this text, else None."""
    import json

    try:
        saved = json.loads((Path(run_root) / PAGES_FILE).read_text(encoding="utf-8"))
        if saved["document_sha256"] == hashlib.sha256(text.encode()).hexdigest():
            return [(int(a), int(b)) for a, b in saved["pages"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None
