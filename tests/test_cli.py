"""The command line: one actionable line for a bad config (before any model loads), the generated config
reference, and help that says where keys are documented."""

import dataclasses

import pytest

from vlmdpo.cli import main
from vlmdpo.config import Config
from vlmdpo.config_reference import config_keys, field_docs
from vlmdpo.eval.config import EvalConfig


def run_failing(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err


@pytest.mark.parametrize("argv, line", [
    (["train", "train.learnin_rate=1e-5"],
     "vlmdpo: unknown key 'train.learnin_rate'; did you mean 'train.learning_rate'? (`vlmdpo config` lists every key)"),
    (["train", "model.nme_or_path=x"], "vlmdpo: unknown key 'model.nme_or_path'; did you mean 'model.name_or_path'?"),
    (["train", "train.batch_size=abc"], "vlmdpo: train.batch_size: Value 'abc' of type 'str' could not be converted"),
    (["train", "train.batch_size=0"], "vlmdpo: train.batch_size and train.gradient_accumulation_steps must be >= 1"),
    (["eval", "generation.max_new_token=3"], "vlmdpo: unknown key 'generation.max_new_token'; did you mean "
                                             "'generation.max_new_tokens'? (`vlmdpo config eval` lists every key)"),
    (["demo", "align.step=3"], "vlmdpo: unknown key 'align.step'; did you mean 'align.steps'?"),
])
def test_a_bad_config_is_one_line_and_exit_code_2(argv, line, capsys, monkeypatch):
    import vlmdpo.train.setup as train_setup

    monkeypatch.setattr(train_setup, "build_policy", lambda *a: pytest.fail("the model loaded"))
    code, err = run_failing(argv, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(line), err


def test_a_mistyped_key_in_a_yaml_file_is_found_too(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model: {name_or_path: tiny:llava}\ntrain: {learning_rat: 1.0e-5}\n")
    code, err = run_failing(["train", str(path)], capsys)
    assert code == 2 and err == ["vlmdpo: unknown key 'train.learning_rat'; did you mean 'train.learning_rate'? "
                                 "(`vlmdpo config` lists every key)"]


def test_config_prints_every_key_with_its_default_and_doc(capsys):
    main(["config"])
    out = capsys.readouterr().out
    for key, _, default, _ in config_keys(Config):
        assert f"{key} = {default!r}" in out
    assert "train.learning_rate = 5e-05  (float)\n    Peak learning rate." in out
    main(["config", "demo"])
    assert "align.steps = 400  (int)" in capsys.readouterr().out


def test_every_config_field_has_a_docstring():
    from data_recipes.shapes.settings import DemoConfig

    for schema in (Config, EvalConfig, DemoConfig):
        for key, _, _, doc in config_keys(schema):
            assert doc, f"{schema.__name__}: {key} has no docstring"


def test_field_docs_reads_the_string_after_each_field():
    @dataclasses.dataclass
    class Example:
        a: int = 1
        """The a."""
        b: int = 2
        c: str = "x"
        """The c,
        on two lines."""

    assert field_docs(Example) == {"a": "The a.", "c": "The c,\non two lines."}


def test_help_says_where_keys_are_documented(capsys):
    for argv, command in ((["--help"], "vlmdpo config"), (["train", "--help"], "vlmdpo config"),
                          (["eval", "--help"], "vlmdpo config eval"), (["demo", "--help"], "vlmdpo config demo")):
        with pytest.raises(SystemExit):
            main(argv)
        assert command in capsys.readouterr().out


@pytest.mark.parametrize("items, parsed", [
    ([], (None, [])),
    (["run.yaml"], ("run.yaml", [])),
    (["run.yaml", "train.seed=1"], ("run.yaml", ["train.seed=1"])),
    (["train.seed=1", "loss.beta=0.2"], (None, ["train.seed=1", "loss.beta=0.2"])),
])
def test_config_and_overrides_are_split_in_one_place(items, parsed):
    from vlmdpo.cli import _config_items

    assert _config_items(items) == parsed
