"""Dialogs: a file or folder picker and a record editor."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Input, Label, Static, TextArea

from valign_edge.tui.screens.base import type_into

DOC_SUFFIXES = {".txt", ".md", ".markdown", ".text", ".rst", ".html", ".htm", ".xhtml", ".pdf", ".docx", ".odt"}


class DocumentTree(DirectoryTree):
    """A directory tree that lists folders and, unless ``folders_only``, value documents."""

    def __init__(self, path: Path, folders_only: bool, suffixes: set[str] | None = None, **kwargs):
        self.folders_only = folders_only
        self.suffixes = suffixes or DOC_SUFFIXES
        super().__init__(path, **kwargs)

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        out = []
        for path in paths:
            if path.name.startswith(".") or path.name in ("__pycache__", "node_modules"):
                continue
            try:
                is_dir = path.is_dir()
            except OSError:
                continue
            if is_dir or (not self.folders_only and path.suffix.lower() in self.suffixes):
                out.append(path)
        return out


class PathPicker(ModalScreen[Path | None]):
    """Pick a document (``folders=False``; other files with ``suffixes``) or a run folder (``folders=True``)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="picker.cancel")]

    def __init__(self, title: str, folders: bool, start: Path | None = None, suffixes: set[str] | None = None):
        super().__init__()
        self.title_text, self.folders, self.suffixes = title, folders, suffixes
        self.start = start or Path.cwd()

    def compose(self) -> ComposeResult:
        with Vertical(id="picker", classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(placeholder="type a path or pick one below", id="picker-path", compact=True)
            yield DocumentTree(self.start, self.folders, self.suffixes, id="picker-tree")
            yield Static("", id="picker-error", classes="field-info")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Choose", id="picker-choose", variant="primary", compact=True)
                yield Button("Cancel", id="picker-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#picker-tree").focus()

    def on_key(self, event) -> None:
        type_into(self.query_one("#picker-path", Input), event)  # typed while the tree has focus: a path

    @on(DirectoryTree.FileSelected)
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        if not self.folders:
            self.dismiss(event.path)

    @on(DirectoryTree.DirectorySelected)
    def _dir_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        self.query_one("#picker-path", Input).value = str(event.path)

    @on(Input.Submitted, "#picker-path")
    @on(Button.Pressed, "#picker-choose")
    def _choose(self) -> None:
        value = self.query_one("#picker-path", Input).value.strip()
        error = self.query_one("#picker-error", Static)
        if not value:
            error.update("type a path or pick one")
            return
        path = Path(value).expanduser()
        if self.folders and not (path / "manifest.json").exists():
            error.update(f"{value} is not a valign run folder (no manifest.json)")
            return
        if not self.folders and not path.is_file():
            error.update(f"{value} is not a file")
            return
        self.dismiss(path)

    @on(Button.Pressed, "#picker-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class EditRecord(ModalScreen[str | None]):
    """Rewrite one field of a record (an SFT answer or a DPO chosen answer)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save", id="edit.save"),
        Binding("escape", "cancel", "Cancel", id="edit.cancel"),
    ]

    def __init__(self, prompt: str, field: str, value: str):
        super().__init__()
        self.prompt, self.field, self.value = prompt, field, value

    def compose(self) -> ComposeResult:
        with Vertical(id="edit", classes="dialog"):
            yield Label(f"Edit the {self.field}", classes="dialog-title")
            yield Static(self.prompt, id="edit-prompt", markup=False)
            yield TextArea(self.value, id="edit-text", soft_wrap=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", id="edit-save", variant="primary", compact=True)
                yield Button("Cancel (esc)", id="edit-cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#edit-text").focus()

    @on(Button.Pressed, "#edit-save")
    def action_save(self) -> None:
        text = self.query_one("#edit-text", TextArea).text.strip()
        self.dismiss(text or None)

    @on(Button.Pressed, "#edit-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
