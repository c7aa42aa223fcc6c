"""The app says plainly where the document's text goes: a teacher or judge server off this machine is
refused on the Start screen without --allow-remote (and no run folder is made), named with the host
and the kind of connection with it, and shown again on the Pipeline screen of a run that uses it; the
Start screen offers the GGUF models found in the local stores (Pilot, waiting for conditions)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_stores import build_stores
from test_tui import SIZE, TINY_DOC, notices, wait_for

from valign_edge.tui.app import create_app

REMOTE = "http://192.0.2.7:8080/v1"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "code.md").write_text(TINY_DOC)
    return tmp_path


def _notice(screen) -> str:
    found = screen.query("#privacy-notice")  # empty until the screen is composed
    return str(found.first().render()) if found and found.first().display else ""


def test_start_screen_refuses_a_remote_teacher_without_allow_remote(in_tmp):
    from textual.widgets import Input

    async def go():
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen = app.screen
            assert _notice(screen) == "", "no notice while everything runs in this process"
            screen.query_one("#doc-path", Input).value = "code.md"
            screen.query_one("#teacher-path", Input).value = REMOTE
            await wait_for(pilot, lambda: "192.0.2.7" in _notice(screen), 10, "the refusal notice")
            assert "not on this machine" in _notice(screen) and "--allow-remote" in _notice(screen)
            screen.query_one("#run-path", Input).value = str(in_tmp / "new-run")
            await pilot.click("#start-run")
            await wait_for(pilot, lambda: any(s == "error" and "192.0.2.7" in m for s, m in notices(app)), 30,
                           "the refusal when starting")
            assert not (in_tmp / "new-run").exists(), "nothing is written for a refused teacher"
            assert app.active_run is None and app.job.job is None
            # A server on this machine is fine, and said to keep the text here.
            screen.query_one("#teacher-path", Input).value = "http://127.0.0.1:8080/v1"
            await wait_for(pilot, lambda: "stays here" in _notice(screen), 10, "the loopback notice")

    asyncio.run(go())


def test_start_screen_says_where_the_text_goes_with_allow_remote(in_tmp):
    from textual.widgets import Input

    async def go():
        app = create_app(allow_remote=True)  # valign tui --allow-remote
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen = app.screen
            await wait_for(pilot, lambda: "--allow-remote is on" in _notice(screen), 10, "the allow-remote notice")
            assert "stays on this machine" in _notice(screen)
            screen.query_one("#teacher-path", Input).value = REMOTE
            await wait_for(pilot, lambda: "192.0.2.7" in _notice(screen), 10, "the teacher notice")
            assert (f"the document's text and the prompts built from it go to 192.0.2.7 ({REMOTE}) "
                    "UNENCRYPTED (http)") in _notice(screen)
            assert "--allow-remote is on" not in _notice(screen)
            screen.query_one("#extra", Input).value = "eval.judge=https://judge.example.org/v1"
            await wait_for(pilot, lambda: "judge.example.org" in _notice(screen), 10, "the judge notice")
            text = _notice(screen)
            assert "192.0.2.7" in text, "both servers are named"
            assert ("the judge's prompts (passages of the document, questions and answers) go to judge.example.org "
                    "(https://judge.example.org:443/v1) over HTTPS") in text

    asyncio.run(go())


def test_pipeline_screen_names_the_remote_teacher_of_an_opened_run(in_tmp):
    from valign_edge.config import resolve_config, to_toml
    from valign_edge.runs.workspace import Run

    run = Run.open(in_tmp / "remote-run")
    cfg = resolve_config(overrides={"teacher": REMOTE, "eval.judge": "http://localhost:9000/v1"})
    run.config_path.write_text(to_toml(cfg))

    async def go():
        app = create_app(allow_remote=True)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert app.open_run(run.root)
            app.action_goto("pipeline")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "PipelineScreen", 10, "the pipeline screen")
            screen = app.screen
            await wait_for(pilot, lambda: "192.0.2.7" in _notice(screen), 10, "the pipeline's notice")
            assert "go to 192.0.2.7" in _notice(screen)
            assert "The judge is a server on this machine (http://localhost:9000/v1)" in _notice(screen)

    asyncio.run(go())


def test_start_screen_offers_models_from_local_stores(in_tmp, teacher_gguf, monkeypatch):
    """Ollama and LM Studio stores built in the test's home with the real SmolLM2 GGUF as the model file."""
    from textual.widgets import Select

    home = in_tmp / "home"
    build_stores(home, teacher_gguf)
    monkeypatch.setenv("HOME", str(home))
    for key in ("OLLAMA_MODELS", "HF_HOME", "HF_HUB_CACHE", "VALIGN_MODELS_PATH"):
        monkeypatch.delenv(key, raising=False)

    async def go():
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen = app.screen
            teacher = screen.query_one("#teacher", Select)
            names = [value for _, value in teacher._options]
            assert "ollama:smollm2:135m" in names and any(n.startswith("lmstudio:") for n in names), names
            teacher.value = "ollama:smollm2:135m"
            await wait_for(pilot, lambda: "llama 135M Q4_1" in str(screen.query_one("#teacher-info").render()), 10,
                           "the local model's details")
            assert "installed" in str(screen.query_one("#teacher-info").render())
            assert _notice(screen) == ""

    asyncio.run(go())
