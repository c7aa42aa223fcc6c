"""PDF and Word documents: real files written in the test (python-docx, fpdf2), read back with their
structure (headings, pages), chunked along it, and run through ``valign generate`` and its resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, needs, valign

from valign_edge.documents.chunking import chunk_text
from valign_edge.documents.ingest import read_document

SECTIONS = [
    ("Respect for patients", "Members must treat every patient of the Larkspur clinic with respect and patience. "
     "No one shall be refused care because of their origin, age or beliefs."),
    ("Confidentiality", "Staff must never share a patient's records with anyone outside the care team. "
     "Paper files must be locked away at the end of each shift."),
    ("Conflicts of interest", "Members shall not accept gifts from suppliers. Any personal interest in a "
     "decision must be declared to the ethics board before the decision is taken."),
]


def write_docx(path: Path) -> Path:
    docx = needs("docx")
    document = docx.Document()
    document.add_heading("Larkspur Clinic Code of Conduct", 0)
    document.add_paragraph("This code applies to every member of staff and every volunteer.")
    for title, body in SECTIONS:
        document.add_heading(title, 1)
        for sentence in body.split(". "):
            document.add_paragraph(sentence.rstrip(".") + ".")
        document.add_heading("In practice", 2)
        document.add_paragraph("Ask your team lead when in doubt.", style="List Bullet")
        document.add_paragraph("Report every breach the same day.", style="List Bullet")
    document.save(path)
    return path


def write_pdf(path: Path, outline: bool = True, pages_per_section: int = 1) -> Path:
    """One section per page: the heading in an 18 pt bold font (and a bookmark), the body in 11 pt,
    wrapped over several lines so the reader has to rebuild paragraphs."""
    fpdf = needs("fpdf")
    pdf = fpdf.FPDF()
    for i, (title, body) in enumerate(SECTIONS, 1):
        pdf.add_page()
        pdf.set_font("helvetica", "B", 18)
        if outline:
            pdf.start_section(f"{i}. {title}")
        pdf.cell(text=title, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)
        pdf.set_font("helvetica", size=11)
        for page in range(pages_per_section):
            if page:
                pdf.add_page()
            pdf.multi_cell(0, 6, f"{body} This rule was confirmed by the page {i}.{page} review of the code.")
            pdf.ln(6)
            pdf.multi_cell(0, 6, "Every team lead must explain this rule to new members in their first week.")
    pdf.output(str(path))
    return path


def check_spans(text: str, chunks) -> None:
    for c in chunks:
        assert text[c.start:c.end] == c.text


def test_docx_headings_become_sections(tmp_path):
    doc = read_document(write_docx(tmp_path / "code.docx"))
    assert doc.text.startswith("# Larkspur Clinic Code of Conduct\n")
    for title, _ in SECTIONS:
        assert f"\n# {title}\n" in doc.text
    assert "\n## In practice\n" in doc.text
    assert "- Ask your team lead when in doubt.\n- Report every breach the same day." in doc.text
    assert not doc.pages
    chunks = chunk_text(doc.text, 60, 8)
    check_spans(doc.text, chunks)
    headings = {c.heading for c in chunks}
    assert {title for title, _ in SECTIONS} | {"In practice"} <= headings
    # a chunk never crosses a heading: each section's rule sentence sits under its own heading
    for title, body in SECTIONS:
        first = body.split(". ")[0]
        assert [c.heading for c in chunks if first in c.text] == [title]
    assert all("pages" not in c.to_dict() for c in chunks)


def test_pdf_outline_fonts_and_pages(tmp_path):
    doc = read_document(write_pdf(tmp_path / "code.pdf", pages_per_section=2))
    text = doc.text
    for title, body in SECTIONS:
        assert f"\n{title}\n" not in text  # never a bare line: a heading
        assert f"# {title}\n" in text
        assert body.split(". ")[0] in text  # wrapped lines are joined back into sentences
    # six pages, each starting where its own text starts
    assert [p for _, p in doc.pages] == [1, 2, 3, 4, 5, 6]
    starts = [offset for offset, _ in doc.pages]
    for i, (offset, page) in enumerate(doc.pages):
        page_text = text[offset:starts[i + 1] if i + 1 < len(starts) else len(text)]
        section, part = divmod(page - 1, 2)
        assert f"page {section + 1}.{part} review" in page_text
    chunks = chunk_text(text, 90, 10, page_starts=doc.pages)
    check_spans(text, chunks)
    assert {c.heading for c in chunks} == {title for title, _ in SECTIONS}
    for c in chunks:
        first, last = c.to_dict()["pages"]
        section = [t for t, _ in SECTIONS].index(c.heading)
        assert 2 * section + 1 <= first <= last <= 2 * section + 2, (c.heading, c.pages)
        # the pages a chunk names are exactly the pages its span of the text touches
        touched = [page for i, (offset, page) in enumerate(doc.pages)
                   if offset < c.end and (starts[i + 1] if i + 1 < len(starts) else len(text)) > c.start]
        assert touched == list(range(first, last + 1)), (c.heading, c.pages, touched)
        if first == last:
            assert f"page {section + 1}.{(first - 1) % 2} review" in c.text
    assert any(c.pages[0] != c.pages[1] for c in chunks)  # a section's chunks span its two pages


def test_pdf_font_sizes_without_outline(tmp_path):
    doc = read_document(write_pdf(tmp_path / "plain.pdf", outline=False))
    for title, _ in SECTIONS:
        assert f"# {title}\n" in doc.text


def test_pdf_without_text_layer_is_one_line(tmp_path):
    fpdf = needs("fpdf")
    pdf = fpdf.FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60, style="F")  # a "scanned" page: drawing, no text
    pdf.output(str(tmp_path / "scan.pdf"))
    proc = valign("generate", tmp_path / "scan.pdf", "--out", tmp_path / "run")
    assert_one_line_error(proc, 2, "no text layer")
    assert not (tmp_path / "run").exists()
    title = fpdf.FPDF()  # a few words are a text layer: too little text, not a scan
    title.add_page()
    title.set_font("Helvetica", size=14)
    title.cell(text="Code of conduct")
    title.output(str(tmp_path / "title.pdf"))
    proc = valign("generate", tmp_path / "title.pdf", "--out", tmp_path / "run")
    assert_one_line_error(proc, 2, "too little text")


@pytest.mark.parametrize("name,data", [("broken.pdf", b"%PDF-1.7\n1 0 obj <<\n"),
                                        ("broken.docx", b"PK\x03\x04 not really a zip")])
def test_damaged_documents_are_one_line(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    proc = valign("generate", tmp_path / name, "--out", tmp_path / "run")
    assert_one_line_error(proc, 2, name)


def data_files(run: Path) -> dict[str, bytes]:
    """What generation wrote from the document (the data, not logs, the lock or the manifest's times)."""
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in run.rglob("*") if p.is_file()
            and (p.name.startswith(("document", "chunks")) or p.relative_to(run).parts[0] in ("synth", "data"))}


def test_generate_pdf_keeps_pages_and_resumes_unchanged(tmp_path, teacher_gguf):
    pdf = write_pdf(tmp_path / "code.pdf")
    run = tmp_path / "run"
    flags = ["--preset", "quick", "--set", "generate.max_chunks=1", "--set", "generate.n_threads=1"]
    first = valign("generate", pdf, "--out", run, *flags)
    assert first.returncode == 0, first.stderr[-3000:]
    text = (run / "document.txt").read_text(encoding="utf-8")
    chunks = [json.loads(line) for line in (run / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [c["heading"] for c in chunks] == [t for t, _ in SECTIONS]
    assert [c["pages"] for c in chunks] == [[1, 1], [2, 2], [3, 3]]
    for c in chunks:
        assert text[c["start"]:c["end"]] == c["text"]
    records = [json.loads(line) for line in (run / "synth" / "sft.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records and all(r["chunk_id"] == chunks[0]["id"] for r in records)
    before = data_files(run)
    assert {"document.txt", "document.pages.json", "chunks.jsonl", "synth/sft.jsonl", "data/sft/train.jsonl"} <= set(before)
    again = valign("generate", pdf, "--out", run, *flags)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in again.stdout + again.stderr
    after = data_files(run)
    assert after == before
