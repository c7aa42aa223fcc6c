"""OpenDocument text (.odt): real files written in the test with odfdo, read back with their headings,
lists, tables and sections, chunked along the headings; damaged or non-text files and EPUB (no kept
library reads it) are one line, exit 2."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from conftest import assert_one_line_error, needs, valign
from test_documents import SECTIONS, check_spans, data_files

from valign_edge.documents.chunking import chunk_text
from valign_edge.documents.ingest import read_document
from valign_edge.errors import UserError


def write_odt(path: Path) -> Path:
    """What LibreOffice writes for a styled document: a Title paragraph, text:h headings at outline
    levels 1 and 2, paragraphs with spans, tabs and line breaks, bullet lists (one nested), a table,
    a section, and a table of contents that repeats the headings (it must not be read)."""
    odfdo = needs("odfdo")
    from odfdo import TOC, Header, LineBreak, List, Paragraph, Section, Span, Tab, Table

    document = odfdo.Document("text")
    body = document.body
    body.clear()
    body.append(Paragraph("Larkspur Clinic Code of Conduct", style="Title"))
    intro = Paragraph("This code applies to every member of staff ")
    intro.append(Span("and every volunteer.", style="T1"))
    body.append(intro)
    toc = TOC("Contents")
    body.append(toc)
    for i, (title, text) in enumerate(SECTIONS):
        holder = body
        if i == 2:  # a section (text:section) is read in place
            holder = Section("Annex")
            body.append(holder)
        holder.append(Header(1, title))
        for sentence in text.split(". "):
            holder.append(Paragraph(sentence.rstrip(".") + "."))
        holder.append(Header(2, "In practice"))
        items = List(["Ask your team lead when in doubt.", "Report every breach the same day."])
        items.get_elements("text:list-item")[1].append(List(["Write down what you saw."]))
        holder.append(items)
    table = Table("Contacts", width=2, height=2)
    table.set_values([["Ethics board", "room 12"], ["Team lead", "room 3"]])
    body.append(table)
    closing = Paragraph("Signed by the board")
    closing.append(Tab())
    closing.append("in March.")
    closing.append(LineBreak())
    closing.append("Reviewed every year.")
    body.append(closing)
    toc.fill(document)
    assert SECTIONS[0][0] in str(toc), "the table of contents lists the headings"
    document.save(path)
    return path


def test_odt_headings_lists_tables_and_sections(tmp_path):
    doc = read_document(write_odt(tmp_path / "code.odt"))
    text = doc.text
    assert text.startswith("# Larkspur Clinic Code of Conduct\n\nThis code applies to every member of staff and "
                           "every volunteer.\n"), text[:200]
    for title, _ in SECTIONS:
        assert text.count(f"\n# {title}\n") == 1 and text.count(title) == 1, "the table of contents is not read"
    assert text.count("\n## In practice\n") == 3
    assert ("- Ask your team lead when in doubt.\n- Report every breach the same day.\n"
            "- Write down what you saw.") in text
    assert "Ethics board | room 12\n\nTeam lead | room 3" in text
    assert "Signed by the board in March. Reviewed every year." in text
    assert not doc.pages
    chunks = chunk_text(text, 60, 8)
    check_spans(text, chunks)
    assert {title for title, _ in SECTIONS} | {"In practice"} <= {c.heading for c in chunks}
    for title, body in SECTIONS:  # a chunk never crosses a heading, the section's included
        first = body.split(". ")[0]
        assert [c.heading for c in chunks if first in c.text] == [title]


def test_odt_reads_like_the_same_docx(tmp_path):
    """The same headings and paragraphs written as DOCX and as ODT give the same text."""
    import odfdo
    from odfdo import Header, List, Paragraph
    from test_documents import write_docx

    document = odfdo.Document("text")
    document.body.clear()
    document.body.append(Paragraph("Larkspur Clinic Code of Conduct", style="Title"))
    document.body.append(Paragraph("This code applies to every member of staff and every volunteer."))
    for title, body in SECTIONS:
        document.body.append(Header(1, title))
        for sentence in body.split(". "):
            document.body.append(Paragraph(sentence.rstrip(".") + "."))
        document.body.append(Header(2, "In practice"))
        document.body.append(List(["Ask your team lead when in doubt.", "Report every breach the same day."]))
    document.save(tmp_path / "code.odt")
    assert read_document(tmp_path / "code.odt").text == read_document(write_docx(tmp_path / "code.docx")).text


@pytest.mark.parametrize("name,make,message", [
    ("broken.odt", lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), "cannot read the OpenDocument text"),
    ("sheet.odt", lambda p: __import__("odfdo").Document("spreadsheet").save(p), "not a text document"),
    ("book.epub", lambda p: zipfile.ZipFile(p, "w").writestr("mimetype", "application/epub+zip"), "not supported"),
])
def test_bad_or_unsupported_documents_are_one_line(tmp_path, name, make, message):
    needs("odfdo")
    path = tmp_path / name
    make(path)
    with pytest.raises(UserError, match=message) as exc:
        read_document(path)
    assert "\n" not in str(exc.value)
    proc = valign("generate", path, "--out", tmp_path / "run")
    assert_one_line_error(proc, 2, name)
    assert not (tmp_path / "run").exists()


def test_generate_odt_follows_headings_and_resumes_unchanged(tmp_path, teacher_gguf):
    odt = write_odt(tmp_path / "code.odt")
    run = tmp_path / "run"
    flags = ["--preset", "quick", "--set", "generate.max_chunks=1", "--set", "generate.n_threads=1"]
    first = valign("generate", odt, "--out", run, *flags)
    assert first.returncode == 0, first.stderr[-3000:]
    text = (run / "document.txt").read_text(encoding="utf-8")
    assert text == read_document(odt).text
    chunks = [json.loads(line) for line in (run / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {t for t, _ in SECTIONS} <= {c["heading"] for c in chunks}
    for c in chunks:
        assert text[c["start"]:c["end"]] == c["text"]
        assert "pages" not in c
    before = data_files(run)
    assert {"document.txt", "chunks.jsonl", "synth/sft.jsonl", "data/sft/train.jsonl"} <= set(before)
    again = valign("generate", odt, "--out", run, *flags)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in again.stdout + again.stderr
    assert data_files(run) == before
