"""The README's example rows and its first training command run as written (one training step)."""

import json
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

from vlmdpo.cli import main

README = Path(__file__).parents[1] / "README.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_example_rows_train_one_step(tmp_path, monkeypatch):
    rows = [json.loads(line) for line in code_blocks("jsonl")[0].splitlines() if line.strip()]  # my_data/train.jsonl
    assert len(rows) >= 2 and any(isinstance(row["prompt"], str) for row in rows) \
        and any(isinstance(row["prompt"], list) for row in rows)  # a plain and a conversational row
    commands = [line for block in code_blocks("bash") for line in block.splitlines()
                if line.startswith("vlmdpo train model.name_or_path=tiny:")]
    assert commands, "the README shows a first training command on a tiny model"
    argv = shlex.split(commands[0])[1:]
    train_file = next(item.split("=", 1)[1] for item in argv if item.startswith("data.train="))
    data = tmp_path / train_file
    data.parent.mkdir(parents=True)
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    for row in rows:  # the images the rows name, relative to the jsonl's folder
        for image in row.get("images") or []:
            (data.parent / image).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), (200, 120, 40)).save(data.parent / image)
    monkeypatch.chdir(tmp_path)
    main(argv + ["train.progress=false"])
    output_dir = Path(next(item.split("=", 1)[1] for item in argv if item.startswith("train.output_dir=")))
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 1 and records[-1]["loss"] > 0
    assert (output_dir / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("command, key", [("vlmdpo config", "train.learning_rate"),
                                          ("vlmdpo config eval", "generation.max_new_tokens"),
                                          ("vlmdpo config demo", "align.steps")])
def test_the_config_reference_commands_the_readme_points_to_run(command, key, capsys):
    assert command in README.read_text()
    main(shlex.split(command)[1:])
    assert key in capsys.readouterr().out
