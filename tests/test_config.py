import pytest

from valign_edge import config
from valign_edge.config import RunConfig
from valign_edge.errors import UserError


def test_defaults_then_preset_then_file_then_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[generate]\nquestions_per_chunk = 5\nmax_chunks = 9\n[train]\nlora_rank = 4\n')
    cfg = config.resolve_config(None, "quick", f, {"generate.max_chunks": "2"})
    assert cfg.preset == "quick"
    assert cfg.generate.questions_per_chunk == 5  # file beats preset (quick sets 3)
    assert cfg.generate.max_chunks == 2  # flags beat the file
    assert cfg.train.lora_rank == 4
    assert cfg.eval.max_new_tokens == config.PRESETS["quick"]["eval.max_new_tokens"]


def test_saved_run_config_round_trips(tmp_path):
    cfg = config.resolve_config(None, "quick", None, {"seed": "7", "train.dpo_beta": "0.2"})
    saved = tmp_path / "config.toml"
    saved.write_text(config.to_toml(cfg))
    again = config.resolve_config(saved)
    assert again == cfg


@pytest.mark.parametrize("key,value,message", [
    ("generate.nope", "1", "unknown config key"),
    ("nosection.x", "1", "unknown config section"),
    ("train.lora_rank", "many", "not a valid int"),
    ("train.sft_lr", "-1", "must not be negative"),
    ("export.quant", "q3_weird", "not one of"),
    ("train.backend", "tpu", "not one of"),
    # issue 32.5: each passed validation and failed later, after work was done
    ("seed", str(2**64), "out of range for a random seed"),
    ("eval.bootstrap", "0", "out of range for a number of resamples"),
    ("eval.systems", "vanilla,bogus", "'bogus' is not a system"),
    ("generate.passages", "1.5", "out of range for a share"),
])
def test_bad_values_are_one_line_errors(key, value, message):
    with pytest.raises(UserError, match=message):
        config.resolve_config(None, None, None, {key: value})


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset"):
        config.resolve_config(None, "turbo")


def test_invalid_toml(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[generate\n")
    with pytest.raises(UserError, match="not valid TOML"):
        config.resolve_config(None, None, f)


def test_parse_set():
    assert config.parse_set(["a.b=1", "c = x"]) == {"a.b": "1", "c": "x"}
    with pytest.raises(UserError):
        config.parse_set(["novalue"])


def test_every_field_has_help():
    text = config.describe()
    assert "generate.questions_per_chunk" in text and "# " in text
    assert all("#" in line for line in text.splitlines())


def test_saved_student_changes_only_once_training_checked_it(tmp_path):
    from valign_edge.generation.generate import save_config
    from valign_edge.runs.workspace import Run

    run = Run.open(tmp_path / "run")
    save_config(run, RunConfig(student="good-student"))
    assert config.resolve_config(run.config_path).student == "good-student"  # a new run takes it as given
    save_config(run, RunConfig(student="bad.gguf", seed=3))
    saved = config.resolve_config(run.config_path)
    assert saved.student == "good-student" and saved.seed == 3
    save_config(run, RunConfig(student="other-student"), student_checked=True)
    assert config.resolve_config(run.config_path).student == "other-student"


def test_chat_answer_length_out_of_range_is_one_line(tmp_path):
    from conftest import assert_one_line_error, valign

    for value in ("0", "-5", "9000"):  # 0 and below used to mean "no limit"
        assert_one_line_error(valign("chat", tmp_path, "--max-tokens", value), 2, "--max-tokens")


def test_every_limit_names_a_numeric_setting():
    """validate() skips a LIMITS key that names no setting, so a typo there would switch a range check off
    without a word: each key must name a real numeric setting."""
    from valign_edge.config import LIMITS, RunConfig

    cfg = RunConfig()
    for key in LIMITS:
        section, name = key.split(".", 1)
        value = getattr(getattr(cfg, section, None), name, None)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), key
