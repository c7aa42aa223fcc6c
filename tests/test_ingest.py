import pytest

from valign_edge.documents.ingest import read_document
from valign_edge.errors import UserError


def test_markdown_is_normalized(tmp_path):
    f = tmp_path / "p.md"
    f.write_bytes("\ufeff# Title\r\n\r\n\r\n\r\nBe  kind\tto   everyone.\r\nAlways.\r\n".encode())
    doc = read_document(f)
    assert doc.text == "# Title\n\nBe kind to everyone.\nAlways.\n"
    assert len(doc.sha256) == 64


def test_html_keeps_headings_and_drops_scripts(tmp_path):
    f = tmp_path / "p.html"
    f.write_text("<html><head><style>x{}</style></head><body><h2>Respect</h2><p>Treat people &amp; "
                 "property with care.</p><script>alert(1)</script><p>Report harm at once, please.</p></body></html>")
    text = read_document(f).text
    assert "## Respect" in text and "people & property" in text and "alert" not in text


def test_mixed_encodings_are_decoded_line_by_line(tmp_path):
    f = tmp_path / "mixed.txt"
    f.write_bytes("Caf\u00e9 rules apply to everyone here.\n".encode() + "Na\u00efve staff must ask first.\n".encode("cp1252"))
    text = read_document(f).text
    assert "Café" in text and "Naïve" in text


def test_utf16_with_bom(tmp_path):
    f = tmp_path / "u16.txt"
    f.write_bytes("Everyone must respect the rules of the house.".encode("utf-16"))
    assert "respect the rules" in read_document(f).text


@pytest.mark.parametrize("name,data,message", [
    ("empty.txt", b"", "is empty"),
    ("blank.txt", b"   \n\t\n", "is empty"),
    ("bin.txt", bytes(range(256)) * 20, "binary"),
    ("short.txt", b"Hi there.", "too little text"),
    ("bad.txt", b"valid line of text here\n\x81\x8d\x8f\x90 broken bytes \x9d\n", "cannot decode"),
    ("doc.pdf", b"%PDF-1.4 fake", "cannot read the PDF"),
    ("doc.odt", b"PK\x03\x04 fake", "cannot read the OpenDocument text"),
    ("book.epub", b"PK\x03\x04 fake", "not supported"),
    ("doc.docx", b"plain text pretending to be a Word file", "not a DOCX file"),
])
def test_bad_documents_are_refused_in_one_line(tmp_path, name, data, message):
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(UserError, match=message) as exc:
        read_document(f)
    assert "\n" not in str(exc.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_document(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="is a folder"):
        read_document(tmp_path)
