"""The command line's answers to bad inputs (one line on stderr, exit status 2 for bad arguments, 1 for any other
failure, never a traceback unless HF_VTOK_DEBUG=1) and the fast start it owes: ``import hf_vtok`` and
``hf-vtok --help`` load no torch, yet the Auto classes find hf_vtok's models right after ``import hf_vtok``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_vtok.commands.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(argv, capsys) -> tuple[int, str]:
    """``main(argv)``'s exit status (returned or raised) and its stderr."""
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, expected_code: int, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == expected_code, (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ------------------------------------------------------------------------------------------------ recipes
@pytest.fixture
def recipe_files(tmp_path):
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    (tmp_path / "list.json").write_text("[1, 2]")
    return tmp_path


@pytest.mark.parametrize(
    "recipe, fragments",
    [
        ("missing.yaml", ["missing.yaml", "is not a file"]),
        ("broken.yaml", ["broken.yaml", "not valid YAML/JSON"]),
        ("list.json", ["list.json", "must be a mapping", "list"]),
    ],
)
def test_train_tokenizer_refuses_a_bad_recipe_file(recipe_files, capsys, recipe, fragments):
    argv = ["train-tokenizer", "ddt", "--recipe", str(recipe_files / recipe), "--output_dir", str(recipe_files / "out")]
    assert_one_line_error(*run_cli(argv, capsys), 2, "hf-vtok train-tokenizer: error:", *fragments)
    assert not (recipe_files / "out").exists()


def test_train_tokenizer_refuses_a_recipe_of_another_family(tmp_path, capsys):
    argv = ["train-tokenizer", "setok", "--recipe", "ddt_tiny", "--output_dir", str(tmp_path / "out")]
    assert_one_line_error(*run_cli(argv, capsys), 2, "`family` 'ddt'", "FAMILY is 'setok'")


def test_train_tokenizer_checks_init_from_before_loading_anything(tmp_path, capsys, monkeypatch):
    import hf_vtok.trainer.tokenizer_trainer as tokenizer_trainer

    def must_not_run(*args, **kwargs):
        raise AssertionError("train_tokenizer ran although --init_from does not exist")

    monkeypatch.setattr(tokenizer_trainer, "train_tokenizer", must_not_run)
    argv = ["train-tokenizer", "ddt", "--init_from", "/nonexistent", "--output_dir", str(tmp_path / "out")]
    assert_one_line_error(*run_cli(argv, capsys), 2, "`init_from`", "'/nonexistent'")
    # a folder with neither training_model/ nor decoder/model_index.json is refused too; a shipped folder passes
    (tmp_path / "exported" / "decoder").mkdir(parents=True)
    argv[argv.index("/nonexistent")] = str(tmp_path / "exported")
    assert_one_line_error(*run_cli(argv, capsys), 2, "`init_from`", "decoder/")
    started = []

    def record_and_stop(script_args, training_args):
        started.append(script_args.init_from)
        raise ValueError("stopped by the test after the checks")

    monkeypatch.setattr(tokenizer_trainer, "train_tokenizer", record_and_stop)
    (tmp_path / "exported" / "decoder" / "model_index.json").write_text("{}")
    assert_one_line_error(*run_cli(argv, capsys), 2, "stopped by the test")
    assert started == [str(tmp_path / "exported")]


def test_train_mllm_refuses_negative_max_steps_and_missing_init_from(tmp_path, capsys):
    argv = ["train-mllm", "--max_steps", "-1", "--output_dir", str(tmp_path / "out")]
    assert_one_line_error(*run_cli(argv, capsys), 2, "`max_steps`", "-1")
    argv = ["train-mllm", "--init_from", "/nonexistent", "--output_dir", str(tmp_path / "out")]
    assert_one_line_error(*run_cli(argv, capsys), 2, "`init_from`", "'/nonexistent'")


def test_pretokenize_refuses_an_unknown_source_kind_before_loading_the_tokenizer(tmp_path, capsys, monkeypatch):
    import hf_vtok.data.pretokenize as pretokenize

    def must_not_run(*args, **kwargs):
        raise AssertionError("the tokenizer loaded although the dataset source is invalid")

    monkeypatch.setattr(pretokenize, "load_visual_tokenizer", must_not_run)
    argv = ["pretokenize", "--tokenizer", "shipped:ddt", "--dataset", "bogus:xyz", "--out", str(tmp_path / "out")]
    code, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, 2, "'bogus:xyz'", "unknown source kind 'bogus'")
    for kind in pretokenize.SOURCE_KINDS.values():  # the valid kinds are listed
        assert kind in err
    argv = ["pretokenize", "--tokenizer", "shipped:ddt", "--dataset", f"imagefolder:{tmp_path / 'none'}", "--out", str(tmp_path / "o")]
    assert_one_line_error(*run_cli(argv, capsys), 2, "existing folder")


def test_any_other_failure_is_one_line_and_exit_status_1_unless_debugging(tmp_path, capsys, monkeypatch):
    import hf_vtok.data.shapes as shapes

    def broken(*args, **kwargs):
        raise RuntimeError("disk on\nfire")

    monkeypatch.setattr(shapes, "write_shapes_dataset", broken)
    argv = ["data", "shapes", "--num-images", "2", "--out", str(tmp_path / "shapes")]
    monkeypatch.delenv("HF_VTOK_DEBUG", raising=False)
    assert_one_line_error(*run_cli(argv, capsys), 1, "hf-vtok data:", "RuntimeError", "disk on fire", "HF_VTOK_DEBUG=1")
    monkeypatch.setenv("HF_VTOK_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on"):
        main(argv)


# ------------------------------------------------------------------------------------------------ fast starts
def fresh_python(code: str, **env) -> dict:
    """Run ``code`` in a fresh interpreter (this checkout's hf_vtok first) and return the JSON it prints last."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), **env}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


HEAVY = ("torch", "transformers", "diffusers", "datasets", "trl", "peft", "accelerate")


def test_import_hf_vtok_and_cli_help_load_no_heavy_library():
    """``import hf_vtok`` and every subcommand's ``--help`` (the training commands' too: theirs is the shipped text of
    their TRL parsers) import none of torch, transformers, diffusers, datasets, TRL, PEFT, accelerate."""
    report = fresh_python(
        "import json, sys\n"
        "import hf_vtok\n"
        f"heavy = {HEAVY!r}\n"
        "after_import = sorted(name for name in heavy if name in sys.modules)\n"
        "from hf_vtok.commands.cli import build_parser, main\n"
        "subcommands = build_parser()._subparsers._group_actions[0].choices\n"
        "helped = []\n"
        "for name, parser in subcommands.items():\n"
        "    for argv in ([name, '--help'], ['--help']):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    helped.append(name)\n"
        "print(json.dumps({'after_import': after_import, 'helped': helped,\n"
        "                  'after_help': sorted(name for name in heavy if name in sys.modules)}))\n"
    )
    assert report["after_import"] == [] and report["after_help"] == [], report
    assert {"demo", "eval", "data", "pretokenize", "push", "train-tokenizer", "train-mllm"} <= set(report["helped"])


def test_install_constraints_pin_the_versions_the_help_texts_were_rendered_with():
    # `make install` resolves to constraints.txt; a newer transformers on the index would otherwise make the training
    # commands' --help fall back to their real (heavy) parsers on a fresh install.
    recorded = json.loads((SRC / "hf_vtok" / "commands" / "help" / "versions.json").read_text())
    pins = {}
    for line in (SRC.parent / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    assert {name: pins.get(name) for name in recorded} == recorded  # (the demo's SmolLM2 packages are pinned there too)


def test_shipped_help_of_the_training_commands_is_what_their_real_parsers_print(capsys, monkeypatch):
    """The training commands' ``--help`` is a shipped text (their TRL parsers take seconds to import); with the
    transformers / TRL / PEFT versions it was rendered with it must be exactly what the live parsers print (a changed
    argument dataclass fails here until ``make help-texts`` regenerates it), and with any other installed version the
    real parser answers instead. Any other argument still goes to the real parser."""
    from hf_vtok.commands import arguments
    from hf_vtok.commands.cli import SHIPPED_HELP, help_texts

    live = help_texts()
    assert set(live) == set(SHIPPED_HELP) == {path.stem for path in arguments.HELP_TEXTS_DIR.glob("*.txt")}
    recorded = json.loads((arguments.HELP_TEXTS_DIR / "versions.json").read_text())
    for name, text in live.items():
        assert "--output_dir" in text and "--recipe" in text and "--learning_rate" in text
        if recorded == arguments.installed_versions():
            shipped = (arguments.HELP_TEXTS_DIR / f"{name}.txt").read_text(encoding="utf-8")
            assert shipped == text, f"{name}: the shipped --help differs from its parser's; run `make help-texts`"
            assert arguments.shipped_help(name) == shipped
        for argv in ([name, "--help"], [name, "ddt", "-h", "--max_steps", "3"]):
            with pytest.raises(SystemExit) as exit_info:  # exits like argparse's own --help
                main(argv)
            assert exit_info.value.code == 0 and capsys.readouterr().out == text
    # other versions installed than the text was rendered with: the shipped text is not used, the real parser prints
    monkeypatch.setattr(arguments, "installed_versions", lambda: {**recorded, "trl": "0.0.1"})
    for name, text in live.items():
        assert arguments.shipped_help(name) is None
        with pytest.raises(SystemExit) as exit_info:  # argparse's own --help exits
            main([name, "--help"])
        assert exit_info.value.code == 0 and capsys.readouterr().out == text
    # after `--` a "--help" is not an option: the real parser sees the arguments (and refuses the stray ones)
    code, err = run_cli(["train-mllm", "--output_dir", "x", "--", "--help"], capsys)
    assert code == 2 and "--help" in err


def test_auto_classes_find_hf_vtok_models_right_after_import(tmp_path):
    """Nothing but ``import hf_vtok``: AutoConfig / AutoModel / AutoModelForPreTraining / AutoImageProcessor load a saved
    tiny tokenizer, and diffusers and transformers.pipeline know hf_vtok's pipelines."""
    from hf_vtok import DDTImageProcessorPil, DDTTokenizerConfig, DDTTokenizerModel

    config = DDTTokenizerConfig.tiny()
    DDTTokenizerModel(config).save_pretrained(tmp_path)
    DDTImageProcessorPil.from_tokenizer_config(config).save_pretrained(tmp_path)
    report = fresh_python(
        "import json, sys\n"
        "import hf_vtok\n"
        "from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForPreTraining\n"
        f"folder = {str(tmp_path)!r}\n"
        "model = AutoModel.from_pretrained(folder)\n"
        "config = AutoConfig.from_pretrained(folder)\n"
        "processor = AutoImageProcessor.from_pretrained(folder)\n"
        "import diffusers\n"
        "from transformers.pipelines import PIPELINE_REGISTRY\n"
        "print(json.dumps({'model': type(model).__module__ + '.' + type(model).__name__,\n"
        "                  'processor': type(processor).__name__,\n"
        "                  'pretraining': AutoModelForPreTraining.from_config(config).__class__.__name__,\n"
        "                  'diffusers': diffusers.DDTDecoderPipeline.__module__,\n"
        "                  'task': PIPELINE_REGISTRY.supported_tasks['text-to-image']['impl'].__name__}))\n"
    )
    assert report == {
        "model": "hf_vtok.models.ddt.modeling_ddt.DDTTokenizerModel",
        "processor": "DDTImageProcessorPil",
        "pretraining": "DDTTokenizerForPreTraining",
        "diffusers": "hf_vtok.models.ddt.pipeline_ddt",
        "task": "VTokTextToImageHFPipeline",
    }


# ------------------------------------------------------------------------------------------------ push
class FailingHfApi:
    """Stands in for huggingface_hub.HfApi: the repository is created, the upload fails."""

    staged: list[Path] = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, private, exist_ok, repo_type):
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
        FailingHfApi.staged.append(Path(folder_path))
        assert (Path(folder_path) / "README.md").is_file()
        raise ConnectionError("the Hub is unreachable")


def test_push_removes_its_temporary_staging_folder_when_the_upload_fails(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    from hf_vtok.data.pretokenize import SHIPPED_CHECKPOINTS_DIR

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingHfApi)
    FailingHfApi.staged.clear()
    code, err = run_cli(["push", str(SHIPPED_CHECKPOINTS_DIR / "ddt"), "--repo-id", "me/ddt"], capsys)
    assert_one_line_error(code, err, 1, "ConnectionError", "the Hub is unreachable")
    assert len(FailingHfApi.staged) == 1 and not FailingHfApi.staged[0].exists()
    # a staging folder the user named is theirs: kept, with what was staged
    code, err = run_cli(["push", str(SHIPPED_CHECKPOINTS_DIR / "ddt"), "--repo-id", "me/ddt", "--staging-dir", str(tmp_path / "s")], capsys)
    assert code == 1 and FailingHfApi.staged[-1] == tmp_path / "s" and (tmp_path / "s" / "decoder" / "model_index.json").is_file()


def test_staged_model_cards_say_that_import_hf_vtok_is_needed(tmp_path):
    from hf_vtok.data.pretokenize import SHIPPED_CHECKPOINTS_DIR
    from hf_vtok.trainer.hub import push_folder

    # tokenizer and MLLM folders stop loudly without hf_vtok (auto_map stub), and their cards say why
    for name, consequence in (("ddt", "hf_vtok_classes.py"), ("mllm", "hf_vtok_classes.py")):
        plan = push_folder(SHIPPED_CHECKPOINTS_DIR / name, f"me/{name}", dry_run=True, staging_dir=tmp_path / name)
        card = (plan.staging_dir / "README.md").read_text()
        assert "import hf_vtok" in card and consequence in card, card[:2000]
