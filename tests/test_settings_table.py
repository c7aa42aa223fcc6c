"""The bad-settings table, generated from the schema ``valign config`` prints (issue 32.5): every setting's
boundary values (below its least, above its most, negative, nan, the wrong type, an unknown choice) and an
unknown name per section, each through the CLI's own entry point. Each must end in exactly one
``valign: error:`` line and exit 2 before any work: no run folder is made, nothing is saved."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import CANARY_DOC
from valign_edge import cli
from valign_edge.config import CHOICES, LIMITS, POSITIVE, RunConfig


def _settings() -> list[tuple[str, object]]:
    cfg, out = RunConfig(), []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += [(f"{f.name}.{g.name}", getattr(value, g.name)) for g in dataclasses.fields(value)]
        else:
            out.append((f.name, value))
    return out


def _bad_values(key: str, value: object) -> list[str]:
    """Values no stage can work with, from the setting's type, range and choices."""
    if isinstance(value, bool):
        return ["maybe", "2"]
    if isinstance(value, (int, float)):
        bad = ["-1", "abc", "nan" if isinstance(value, float) else "1.5", "1e400" if isinstance(value, float) else ""]
        least, most, _ = LIMITS.get(key, (None, None, ""))
        if least is POSITIVE:
            bad.append("0")
        elif least is not None and least > 0:
            bad.append(str(least - 1) if isinstance(value, int) else str(least / 2))
        if most is not None:
            bad.append(str(int(most) * 10 + 1) if isinstance(value, int) else str(most * 10 + 1))
        if key == "seed":
            bad.append(str(2**64))
        return [b for b in bad if b]
    if key in CHOICES:
        return ["no-such-choice"]
    if key == "eval.systems":
        return ["vanilla,bogus"]
    return []


CASES = [(key, bad) for key, value in _settings() for bad in _bad_values(key, value)]
CASES += [(f"{section}.no_such_setting", "1") for section in ("generate", "train", "export", "eval")]
CASES += [("no_such_setting", "1"), ("no_such_section.key", "1")]


def test_the_table_covers_every_numeric_setting():
    numeric = [k for k, v in _settings() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert numeric and all(any(key == k for key, _ in CASES) for k in numeric)
    assert len(CASES) > 150


@pytest.mark.parametrize("key, value", CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_a_bad_setting_is_one_line_before_any_work(key, value, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_sticky_sigint", lambda: None)  # in-process: leave pytest's signals alone
    doc = tmp_path / "policy.md"
    doc.write_text(CANARY_DOC)
    out = tmp_path / "run"
    try:
        code = cli.main(["generate", str(doc), "--out", str(out), "--set", f"{key}={value}"])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("valign: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists(), f"{key}={value} made a run folder before it was refused"


@pytest.mark.parametrize("args", [["generate", "{doc}", "--out", ""], ["run", "{doc}", "--out", "{out}", "--teacher", ""],
                                  ["run", "{doc}", "--out", "{out}", "--student", " "], ["train", ""], ["chat", ""],
                                  ["purge", ""]], ids=["out", "teacher", "student", "train-run", "chat-target", "purge"])
def test_an_empty_name_is_refused_not_taken_for_the_current_folder(args, tmp_path, capsys, monkeypatch):
    """An empty --out or run folder meant the current folder (purge '' would have purged it), an empty
    --teacher or --student the default."""
    monkeypatch.setattr(cli, "_sticky_sigint", lambda: None)
    monkeypatch.chdir(tmp_path)
    doc = tmp_path / "policy.md"
    doc.write_text(CANARY_DOC)
    with pytest.raises(SystemExit) as exc:
        cli.main([a.format(doc=doc, out=tmp_path / "run") for a in args])
    assert exc.value.code == 2 and "it is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.md"]
