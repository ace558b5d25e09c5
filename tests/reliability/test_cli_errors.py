"""Bad input at the command line: each case one line on stderr, no traceback, and the exit code
that says whose fault it was (2: the config, 1: the data or a missing model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import random_checkpoint, write_class_tree

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.reliability


def config_with(tmp_path: Path, edit, base: str = "zenml_config.yaml", name: str = "bad.yaml") -> Path:
    """``base`` with ``edit`` applied to its parsed YAML, written to ``tmp_path/name``."""
    config = yaml.safe_load((REPO_ROOT / base).read_text())
    edit(config)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``run.py`` called in-process."""
    import run

    status = run.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def set_key(dotted: str, value):
    def edit(config: dict) -> None:
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return edit


CONFIG_CASES = [
    ("misspelt train key", set_key("parameters.train.lrate", 0.1),
     "parameters.train.lrate: unknown key (did you mean 'lr'?)"),
    ("misspelt registry name", set_key("parameters.train.loss", "foca"),
     "parameters.train.loss: unknown loss 'foca' (did you mean 'focal'?); choose from ['bce', 'focal', 'pos_weight_bce']"),
    ("misspelt top-level key", set_key("paramters", {}), "paramters: unknown key (did you mean 'parameters'?)"),
    ("misspelt step name", set_key("steps.finetun", {}), "steps.finetun: unknown key (did you mean 'finetune'?)"),
    ("misspelt step option", lambda c: c["steps"].update(finetune={**c["steps"]["finetune"], "setings": {}}),
     "steps.finetune.setings: unknown key (did you mean 'settings'?)"),
    ("key at the wrong level", set_key("parameters.epochs", 3),
     "parameters.epochs: unknown key (did you mean 'train.epochs'?)"),
    ("wrong type", set_key("parameters.train.lr", "fast"),
     "parameters.train.lr: input should be a valid number, unable to parse string as a number (got 'fast')"),
    ("out of range", set_key("parameters.split.val_fraction", 1.5),
     "parameters.split.val_fraction: input should be less than 0.5 (got 1.5)"),
    ("missing required parameter", lambda c: c["parameters"].pop("data"), "parameters.data: missing (required)"),
    ("set the run lacks", set_key("parameters.adapt.target", "tset"),
     "parameters.adapt.target: 'tset' is a set this run does not have; choose from ['test'] (did you mean 'test'?)"),
    ("nested list item", set_key("parameters.external", [{"name": "a", "data": {"source": "folders"}}]),
     "parameters.external[0].data: data.path is required when data.source is 'folders'"),
    ("filter the source ignores", set_key("parameters.data.filter", {"image_list": "train_val_list.txt"}),
     "parameters.data: data.filter.image_list is not applied by data.source 'folders' "
     "(the filters it applies: view_positions)"),
]


@pytest.mark.parametrize("edit,message", [case[1:] for case in CONFIG_CASES], ids=[case[0] for case in CONFIG_CASES])
def test_a_bad_training_config_is_one_line_naming_file_and_key_with_exit_2(tmp_path, capsys, edit, message):
    config = config_with(tmp_path, edit)
    status, out, err = cli(["train", "--config", str(config)], capsys)
    assert (status, err) == (2, f"{config}: {message}\n")
    assert out == ""


def test_bad_yaml_and_a_missing_config_file_name_the_file(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("parameters:\n  train: {lr: 0.1\n")
    assert cli(["train", "-c", str(broken)], capsys)[::2] == (
        2, f"{broken}: line 3: not valid YAML: expected ',' or '}}', but got '<stream end>'\n")
    missing = tmp_path / "nope.yaml"
    assert cli(["train", "-c", str(missing)], capsys)[::2] == (2, f"{missing}: -: no such config file\n")
    listed = tmp_path / "list.yaml"
    listed.write_text("- parameters\n")
    assert cli(["infer", "-c", str(listed)], capsys)[::2] == (
        2, f"{listed}: -: expected a mapping of keys (parameters:, steps:, ...)\n")


def test_inference_and_ensemble_configs_are_checked_against_their_own_pipelines(tmp_path, capsys):
    infer = config_with(tmp_path, set_key("parameters.chunk_szie", 8), "configs/inference.yaml", "infer.yaml")
    assert cli(["infer", "-c", str(infer)], capsys)[::2] == (
        2, f"{infer}: parameters.chunk_szie: unknown key (did you mean 'chunk_size'?)\n")
    ensemble = config_with(tmp_path, lambda c: c["parameters"]["members"][1]["train"].update(epocs=2),
                           "configs/ensemble.yaml", "ens.yaml")
    assert cli(["ensemble", "-c", str(ensemble)], capsys)[::2] == (
        2, f"{ensemble}: parameters.members[1].train.epocs: unknown key (did you mean 'epochs'?)\n")


def test_every_shipped_config_passes_the_check():
    from pipelines.config_check import check_config
    from pipelines.runner import PIPELINES, pipeline_of

    for path in [REPO_ROOT / "zenml_config.yaml", *sorted((REPO_ROOT / "configs").glob("*.yaml"))]:
        command = next((c for c in PIPELINES if c != "train" and c in path.stem), "train")
        assert check_config(pipeline_of(command), str(path))["parameters"]


def test_debug_shows_the_traceback(tmp_path, capsys):
    config = config_with(tmp_path, set_key("parameters.train.lrate", 0.1))
    status, _, err = cli(["--debug", "train", "-c", str(config)], capsys)
    assert status == 2 and "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.rstrip().endswith(f"{config}: parameters.train.lrate: unknown key (did you mean 'lr'?)")


def test_predict_on_a_missing_path_an_empty_folder_or_a_corrupt_image_is_one_line_with_exit_1(tmp_path, capsys):
    from cxr.models.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(random_checkpoint(image_size=32), tmp_path / "ckpt")
    missing = tmp_path / "nothing.png"
    assert cli(["predict", str(missing), "--checkpoint", str(checkpoint)], capsys)[::2] == (
        1, f"error: no image or folder at {missing}\n")
    (tmp_path / "empty").mkdir()
    assert cli(["predict", str(tmp_path / "empty"), "--checkpoint", str(checkpoint)], capsys)[::2] == (
        1, f"error: no images (.png, .jpg, ...) in {tmp_path / 'empty'}\n")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    status, out, err = cli(["predict", str(corrupt), "--checkpoint", str(checkpoint)], capsys)
    assert status == 1 and err.startswith("error: ") and "corrupt.png" in err and "Traceback" not in err
    assert cli(["predict", str(corrupt), "--checkpoint", str(tmp_path / "no-ckpt")], capsys)[::2] == (
        1, f"error: checkpoint {tmp_path / 'no-ckpt'} lacks model.safetensors\n")


def last_line(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, last stderr line): in-process, ZenML and MLflow log their setup lines first."""
    status, _, err = cli(argv, capsys)
    return status, err.strip().splitlines()[-1]


def test_registry_commands_without_a_registered_model_are_one_line_with_exit_1(capsys):
    for argv in (["serve", "--name", "nobody"], ["export", "--name", "nobody"]):
        assert last_line(argv, capsys) == (1, "error: registered model 'nobody' has no version with alias 'champion'")
    assert last_line(["card", "--name", "nobody"], capsys) == (1, "error: registered model 'nobody' has no versions")
    status, line = last_line(["rollback", "--name", "nobody"], capsys)
    assert status == 1 and line.startswith("rollback refused: ") and "'nobody'" in line


def test_a_data_error_inside_a_pipeline_run_is_one_line_with_exit_1(tmp_path, capsys):
    tree = write_class_tree(tmp_path / "tree", n_per_class=3)
    config = config_with(tmp_path, lambda c: c["parameters"].update(
        data={"source": "folders", "path": str(tree / "missing"), "negative_class": "NORMAL"},
        test_data=None, sample_submission=None, adapt=None))
    status, line = last_line(["train", "-c", str(config)], capsys)
    assert (status, line) == (1, f"error: step ingest: class-folder root {tree / 'missing'} is not a directory")


@pytest.mark.parametrize("argv,status,line", [
    (["train", "-c", "{config}"], 2, "{config}: parameters.train.lrate: unknown key (did you mean 'lr'?)"),
    (["serve", "--name", "nobody"], 1, "error: registered model 'nobody' has no version with alias 'champion'"),
], ids=["config", "registry"])
def test_the_real_cli_prints_no_traceback(tmp_path, argv, status, line):
    config = config_with(tmp_path, set_key("parameters.train.lrate", 0.1))
    done = subprocess.run([sys.executable, "run.py", *(a.format(config=config) for a in argv)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stderr.strip().splitlines()[-1]) == (status, line.format(config=config))
    assert "Traceback" not in done.stderr
