"""Start: choose a document, teacher, student, backend, preset and key settings; start or open a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, Select, Static

from valign_edge.tui.errors import error_text
from valign_edge.tui.screens.base import ValignScreen, type_into
from valign_edge.tui.state import display_path

# Key settings on the form: (config key, label, field width).
SETTINGS = (
    ("generate.max_chunks", "Chunks"),
    ("generate.questions_per_chunk", "questions per chunk"),
    ("train.sft_epochs", "SFT epochs"),
    ("train.max_steps", "max steps"),
)
PREVIEW_CHUNKS = 4


def _field_id(key: str) -> str:
    return "set-" + key.replace(".", "-").replace("_", "-")


def _get(cfg, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


class StartScreen(ValignScreen):
    SCREEN_NAME = "start"
    AUTO_FOCUS = "#start-run"  # not a field, so the number keys switch screens
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+o", "browse", "Browse", id="start.browse"),
        Binding("ctrl+s", "start_run", "Start run", id="start.run"),
        Binding("ctrl+r", "open_run", "Open run", id="start.open"),
        Binding("escape", "leave_field", "Leave field", show=False, id="start.leave"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._auto_run_path = ""
        self._preview_timer = None
        self._models: list[dict] = []
        self._shown_preset = ""  # the preset whose values the settings fields were filled from

    # --- layout -----------------------------------------------------------------------------------------
    def body(self) -> ComposeResult:
        from valign_edge.config import CHOICES, PRESETS, RunConfig

        defaults = RunConfig()
        self._load_models()
        with Horizontal(id="start-body"):
            with VerticalScroll(id="start-form"):
                with Horizontal(classes="row"):
                    yield Label("Document", classes="field-label")
                    yield Input(placeholder="a .txt, .md, .html, .pdf, .docx or .odt file", id="doc-path", compact=True)
                    yield Button("Browse", id="browse", compact=True)
                for role, default in (("teacher", defaults.teacher), ("student", defaults.student)):
                    with Horizontal(classes="row gap" if role == "teacher" else "row"):
                        yield Label(role.capitalize(), classes="field-label")
                        options, value = self._model_options(role, default)
                        yield Select(options, value=value, id=role, allow_blank=False, compact=True)
                        yield Input(placeholder="or a local path", id=f"{role}-path", compact=True)
                    yield Static("", id=f"{role}-info", classes="field-info")
                with Horizontal(classes="row gap"):
                    yield Label("Backend", classes="field-label")
                    yield Select([(c, c) for c in CHOICES["train.backend"]], value="auto", allow_blank=False,
                                 id="backend", compact=True)
                yield Static("", id="backend-info", classes="field-info")
                with Horizontal(classes="row"):
                    yield Label("Preset", classes="field-label")
                    yield Select([(p, p) for p in PRESETS], value="quick", allow_blank=False, id="preset",
                                 compact=True)
                    yield Label("quant", classes="small-label")
                    yield Select([(q, q) for q in CHOICES["export.quant"]], value=defaults.export.quant,
                                 allow_blank=False, id="quant", compact=True)
                    yield Label("seed", classes="small-label")
                    yield Input(str(defaults.seed), id="seed", type="integer", compact=True, classes="num")
                for pair in (SETTINGS[:2], SETTINGS[2:]):
                    with Horizontal(classes="row"):
                        for i, (key, label) in enumerate(pair):
                            yield Label(label, classes="field-label" if i == 0 else "setting-label")
                            yield Input(id=_field_id(key), compact=True, classes="num")
                with Horizontal(classes="row"):
                    yield Label("More", classes="field-label")
                    yield Input(placeholder="section.key=value ... (see `valign config`)", id="extra", compact=True)
                with Horizontal(classes="row gap"):
                    yield Label("Run folder", classes="field-label")
                    yield Input(placeholder="runs/NAME", id="run-path", compact=True)
                yield Static("", id="privacy-notice")  # where the document's text goes (servers only)
                with Horizontal(id="start-buttons"):
                    yield Button("Start run", id="start-run", variant="primary")
                    yield Button("Open run", id="open-run")
                yield Static("", id="start-status")
            with Vertical(id="preview-box"):
                yield Static("", id="preview-title")
                with VerticalScroll(id="preview-scroll"):
                    yield Static(Text("Choose a document to see how it will be chunked.", style="dim"),
                                 id="preview")

    def on_mount(self) -> None:
        for role in ("teacher", "student"):
            self._show_model_info(role)
        self._apply_preset("quick")
        self.run_changed()
        self._show_privacy()
        self.check_backend("auto")

    # --- models ---------------------------------------------------------------------------------------
    def _load_models(self) -> None:
        from valign_edge.models import list_models

        try:
            self._models = list_models()
        except Exception as exc:  # noqa: BLE001
            self.valign.show_error(exc, "Model catalog")
            self._models = []
        from valign_edge.stores import human_params, local_models

        # GGUF models already on the machine (Ollama, LM Studio, HF cache, VALIGN_MODELS_PATH), read in place
        self._models += [{"name": m.name, "roles": ["teacher", "student"] if m.chat_template else ["student"],
                          "size_mb": round(m.size / 1e6), "installed": True, "install": "",
                          "license": f"{m.architecture} {human_params(m.parameters)} {m.quantization}"}
                         for m in local_models() if not m.error]

    def _model_options(self, role: str, default: str) -> tuple[list[tuple[str, str]], str]:
        rows = [m for m in self._models if role in m["roles"]]
        options = [(m["name"] + ("" if m["installed"] else " (not installed)"), m["name"]) for m in rows]
        names = [m["name"] for m in rows]
        if default not in names:
            options.insert(0, (default, default))
        return options, default

    def _show_model_info(self, role: str) -> None:
        info = self.query_one(f"#{role}-info", Static)
        path = self.query_one(f"#{role}-path", Input).value.strip()
        if path:
            info.update(self._path_info(path, role, self.valign.allow_remote))
            return
        name = self.query_one(f"#{role}", Select).value
        row = next((m for m in self._models if m["name"] == name), None)
        if row is None:
            info.update("")
            return
        text = Text(f"{row['size_mb'] or '?'} MB · {row['license']} · ")
        if row["installed"]:
            text.append("installed", style="green")
        else:
            text.append(f"not installed: {row['install']}", style="yellow")
        info.update(text)

    @on(Input.Changed, "#extra")
    def _show_privacy(self, _event=None) -> None:
        """Say plainly where the document's text goes when the teacher or the judge is a server."""
        from valign_edge.config import parse_set
        from valign_edge.tui.privacy import where_text_goes

        teacher = self.query_one("#teacher-path", Input).value.strip() or str(self.query_one("#teacher", Select).value)
        try:
            judge = str(parse_set(self.query_one("#extra", Input).value.split()).get("eval.judge", ""))
        except Exception:  # noqa: BLE001 - a bad setting is reported when the run starts
            judge = ""
        notice = self.query_one("#privacy-notice", Static)
        text = where_text_goes(teacher, judge, self.valign.allow_remote)
        notice.update(text or "")
        notice.display = text is not None

    @staticmethod
    def _path_info(path: str, role: str, allow_remote: bool) -> Text:
        from valign_edge.errors import UserError
        from valign_edge.models import resolve

        try:
            ref = resolve(path, role, allow_remote)
        except UserError as exc:
            return Text(str(exc), style="red")
        if ref.kind in ("gguf", "server"):
            return Text(f"server · {ref.preset['url']}" if ref.kind == "server" else
                        f"local GGUF · {ref.path.stat().st_size / 1e6:.0f} MB", style="green")
        size = sum(p.stat().st_size for p in ref.path.glob("*.safetensors")) / 1e6
        return Text(f"local Hugging Face folder · {size:.0f} MB", style="green")

    @on(Select.Changed, "#teacher")
    @on(Select.Changed, "#student")
    def _model_changed(self, event: Select.Changed) -> None:
        self._show_model_info(event.select.id or "")
        self._show_privacy()

    @on(Input.Changed, "#teacher-path")
    @on(Input.Changed, "#student-path")
    def _model_path_changed(self, event: Input.Changed) -> None:
        self._show_model_info((event.input.id or "").removesuffix("-path"))
        self._show_privacy()

    # --- backend --------------------------------------------------------------------------------------
    @on(Select.Changed, "#backend")
    def _backend_changed(self, event: Select.Changed) -> None:
        self.check_backend(str(event.value))

    @work(thread=True, exclusive=True, group="backend", exit_on_error=False)
    def check_backend(self, requested: str) -> None:
        from valign_edge.backends import choose_backend

        self.app.call_later(self._show_backend, Text("checking…", style="dim"))
        try:
            choice = choose_backend(requested)
            text = Text(f"{'auto → ' if requested == 'auto' else ''}{choice.name} on {choice.device}")
            text.append(f" ({choice.reason})", style="dim")
        except Exception as exc:  # noqa: BLE001
            text = Text(error_text(exc), style="red")
        self.app.call_later(self._show_backend, text)

    def _show_backend(self, text: Text) -> None:
        self.query_one("#backend-info", Static).update(text)

    # --- preset and settings ------------------------------------------------------------------------
    @on(Select.Changed, "#preset")
    def _preset_changed(self, event: Select.Changed) -> None:
        if event.value == self._shown_preset:
            return  # the select announcing the value it was given
        self._apply_preset(str(event.value))

    def _apply_preset(self, preset: str) -> None:
        from valign_edge.config import resolve_config

        self._shown_preset = preset
        cfg = resolve_config(preset=preset)
        for key, _ in SETTINGS:
            self.query_one("#" + _field_id(key), Input).value = f"{_get(cfg, key):g}"

    def overrides(self) -> dict[str, Any]:
        """The settings on the form that differ from the chosen preset, as config overrides."""
        from valign_edge.config import parse_set, resolve_config

        preset = str(self.query_one("#preset", Select).value)
        base = resolve_config(preset=preset)
        out: dict[str, Any] = {}
        for role in ("teacher", "student"):
            path = self.query_one(f"#{role}-path", Input).value.strip()
            out[role] = path or str(self.query_one(f"#{role}", Select).value)
        out["train.backend"] = str(self.query_one("#backend", Select).value)
        out["export.quant"] = str(self.query_one("#quant", Select).value)
        seed = self.query_one("#seed", Input).value.strip()
        if seed:
            out["seed"] = seed
        for key, _ in SETTINGS:
            value = self.query_one("#" + _field_id(key), Input).value.strip()
            if value and value != f"{_get(base, key):g}":
                out[key] = value
        out.update(parse_set(self.query_one("#extra", Input).value.split()))
        return out

    # --- document and preview ------------------------------------------------------------------------
    @on(Input.Changed, "#doc-path")
    def _doc_changed(self, event: Input.Changed) -> None:
        if self._preview_timer is not None:
            self._preview_timer.stop()
        self._preview_timer = self.set_timer(0.3, lambda: self.load_preview(event.value.strip(),
                                                                            *self._chunk_settings()))
        run_input = self.query_one("#run-path", Input)
        run = self.valign.active_run
        if run is not None and event.value.strip() == display_path(run.document_path):
            return  # the opened run's own copy of its document
        if event.value.strip() and run_input.value in ("", self._auto_run_path):
            stem = Path(event.value.strip()).stem or "run"
            self._auto_run_path = f"runs/{stem}"
            run_input.value = self._auto_run_path

    def _chunk_settings(self) -> tuple[int, int]:
        """Chunk size and overlap as the form configures them (preset and extra settings)."""
        from valign_edge.config import resolve_config

        try:
            gen = resolve_config(preset=str(self.query_one("#preset", Select).value), overrides={
                k: v for k, v in self.overrides().items() if k.startswith("generate.chunk_")}).generate
        except Exception:  # noqa: BLE001 - a bad setting is reported when the run starts
            gen = resolve_config().generate
        return gen.chunk_tokens, gen.chunk_overlap

    @work(thread=True, exclusive=True, group="preview", exit_on_error=False)
    def load_preview(self, path: str, chunk_tokens: int, chunk_overlap: int) -> None:
        from valign_edge.documents.chunking import approx_tokens, chunk_text
        from valign_edge.documents.ingest import read_document

        if not path:
            self.app.call_later(self._show_preview, "", Text("Choose a document to see how it will be "
                                                                   "chunked.", style="dim"))
            return
        try:
            text = read_document(path).text
            chunks = chunk_text(text, chunk_tokens, chunk_overlap)
        except Exception as exc:  # noqa: BLE001
            self.app.call_later(self._show_preview, "Preview", Text(error_text(exc), style="red"))
            return
        tokens = approx_tokens(text)
        title = f"Preview: {len(chunks)} chunks, ~{tokens} tokens, {len(text.split())} words"
        body = Text()
        for chunk in chunks[:PREVIEW_CHUNKS]:
            body.append(f"{chunk.id.split('-')[0]} ", style="dim")
            body.append((chunk.heading or "(no heading)") + "\n", style="bold")
            lines = [line for line in chunk.text.splitlines() if not line.lstrip().startswith("#")]
            if lines and chunk.heading and chunk.heading in lines[0]:
                lines = lines[1:]  # the heading is shown above
            snippet = " ".join(" ".join(lines).split())
            body.append((snippet[:240] + ("…" if len(snippet) > 240 else "")) + "\n\n")
        if len(chunks) > PREVIEW_CHUNKS:
            body.append(f"… and {len(chunks) - PREVIEW_CHUNKS} more chunks", style="dim")
        self.app.call_later(self._show_preview, title, body)

    def _show_preview(self, title: str, body: Text) -> None:
        self.query_one("#preview-title", Static).update(Text(title, style="bold"))
        self.query_one("#preview", Static).update(body)

    def on_key(self, event) -> None:
        type_into(self.query_one("#doc-path", Input), event)  # typed with the Start button focused: a path

    # --- actions ----------------------------------------------------------------------------------------
    def action_leave_field(self) -> None:
        self.query_one("#start-run").focus()

    @on(Button.Pressed, "#browse")
    def action_browse(self) -> None:
        from valign_edge.tui.screens.dialogs import PathPicker

        def picked(path: Path | None) -> None:
            if path is not None:
                self.query_one("#doc-path", Input).value = display_path(path)

        self.app.push_screen(PathPicker("Choose a document", folders=False), picked)

    @on(Button.Pressed, "#start-run")
    def action_start_run(self) -> None:
        doc = self.query_one("#doc-path", Input).value.strip()
        run_dir = self.query_one("#run-path", Input).value.strip()
        if not doc:
            self.valign.show_error("choose a document first")
            return
        if not run_dir:
            self.valign.show_error("give a run folder (where data, adapters and the model are written)")
            return
        try:
            overrides = self.overrides()
        except Exception as exc:  # noqa: BLE001
            self.valign.show_error(exc, "Settings")
            return
        preset = str(self.query_one("#preset", Select).value)
        self.valign.new_run(Path(doc).expanduser(), Path(run_dir).expanduser(), preset, overrides)

    @on(Button.Pressed, "#open-run")
    def action_open_run(self) -> None:
        run_dir = self.query_one("#run-path", Input).value.strip()
        if run_dir and (Path(run_dir).expanduser() / "manifest.json").exists():
            if self.valign.open_run(Path(run_dir).expanduser()):
                self.valign.action_goto("pipeline")
            return
        self.valign.open_run_dialog()

    # --- state ----------------------------------------------------------------------------------------
    def run_changed(self) -> None:
        """Show the opened run's document, folder and saved settings on the form."""
        app = self.valign
        if app.active_run is None or app.cfg is None:
            return
        cfg = app.cfg
        doc = app.doc or app.active_run.document_path
        self.query_one("#doc-path", Input).value = display_path(doc)
        self._auto_run_path = display_path(app.active_run.root)
        self.query_one("#run-path", Input).value = self._auto_run_path
        names = {m["name"] for m in self._models}
        for role in ("teacher", "student"):
            value = getattr(cfg, role)
            if value in names:
                self.query_one(f"#{role}", Select).value = value
                self.query_one(f"#{role}-path", Input).value = ""
            else:
                self.query_one(f"#{role}-path", Input).value = value
        self.query_one("#backend", Select).value = cfg.train.backend
        preset = self.query_one("#preset", Select)
        if cfg.preset != preset.value and cfg.preset in ("quick", "default"):
            preset.value = cfg.preset
        self.query_one("#quant", Select).value = cfg.export.quant
        self.query_one("#seed", Input).value = str(cfg.seed)
        self._fill_settings(cfg)

    def _fill_settings(self, cfg) -> None:
        self._shown_preset = cfg.preset
        for key, _ in SETTINGS:
            self.query_one("#" + _field_id(key), Input).value = f"{_get(cfg, key):g}"
