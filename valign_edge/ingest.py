"""Read a value document (.txt, .md, .html) into normalized text, refusing what is not text."""

from __future__ import annotations

import html
import html.parser
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text", ".rst", ""}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
MAX_BYTES = 64 * 1024 * 1024


@dataclass
class Document:
    path: Path
    text: str
    sha256: str


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


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    text = "".join(ch for ch in text if ch == "\n" or unicodedata.category(ch) != "Cc")
    text = "\n".join(re.sub(r" {2,}", " ", line).strip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def read_document(path: str | Path) -> Document:
    """Read and normalize a document; every problem is a one-line ``UserError``."""
    import hashlib

    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"document not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a document file (.txt, .md, .html)")
    suffix = path.suffix.lower()
    if suffix in {".pdf", ".docx", ".doc", ".odt"}:
        raise UserError(f"{path}: {suffix} is not supported yet; save it as .txt, .md or .html")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise UserError(f"{path} is {size / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied") from None
    if not data.strip():
        raise UserError(f"{path} is empty")
    if _looks_binary(data):
        raise UserError(f"{path} looks like a binary file, not text")
    text = _decode(data, path)
    if suffix in HTML_SUFFIXES or (suffix not in TEXT_SUFFIXES and text.lstrip().lower().startswith(("<!doctype html", "<html"))):
        text = html_to_text(text)
    text = normalize(text)
    if len(re.findall(r"\w+", text)) < 5:
        raise UserError(f"{path} has too little text to learn values from")
    return Document(path=path, text=text, sha256=hashlib.sha256(text.encode()).hexdigest())
