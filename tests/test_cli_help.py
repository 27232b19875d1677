"""The command line tells the truth about itself: every option is described, the per-task defaults in
``deeprnn train --help`` are the ones each task runs with, a refused option names the task and the tasks that take
it, every task writes its records, curves and summary, and progress bars count steps and time left."""
import argparse
import json
import re

import pytest
import torch

import deeprnn_cuda.training as training
import deeprnn_cuda.training.action as action_task
import deeprnn_cuda.training.moving_mnist_task as mnist_task
import deeprnn_cuda.training.video_task as video_task
from deeprnn_cuda.cli import TRAIN_TASKS, build_parser, main
from test_moving_mnist import _write_mnist_dir


def _parsers():
    """``(name, parser)`` of ``deeprnn`` and of each of its subcommands."""
    root = build_parser()
    found = [("deeprnn", root)]
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"deeprnn {name}", parser) for name, parser in action.choices.items()]
    return found


def test_every_option_of_every_command_has_a_description():
    parsers = _parsers()
    assert {name for name, _ in parsers} == {"deeprnn", "deeprnn info", "deeprnn train", "deeprnn compare",
                                             "deeprnn demo", "deeprnn predict", "deeprnn export"}
    for name, parser in parsers:
        assert parser.description, name
        for action in parser._actions:
            assert action.help and action.help.strip(), (name, action.option_strings or action.dest)
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help and choice.help.strip(), (name, choice.dest)


def _train_help(dest):
    parser = dict(_parsers())["deeprnn train"]
    return next(a.help for a in parser._actions if a.dest == dest)


def stated_default(dest, task, cell="cbm"):
    """The default ``deeprnn train --help`` states for option ``dest`` under ``--task task`` (and ``--cell``)."""
    text = re.search(r"\(default: (.*)\)$", _train_help(dest)).group(1)
    for part in text.split("; "):
        value, _, tasks = part.rpartition(" for ") if " for " in part else (part, "", "")
        if not tasks or task in tasks.split(", "):
            if re.match(r"\w+ \S+, ", value):  # per cell: "cbm 15, convlstm 4"
                value = dict(v.split(" ") for v in value.split(", "))[cell]
            return float(value)
    raise AssertionError(f"no default of {dest} for {task} in {text!r}")


@pytest.fixture
def ran(monkeypatch):
    """Every task's runner replaced by one that records what it was asked to run with, in option names."""
    seen = {}

    def keep(**values):
        seen.clear()
        seen.update({k: v for k, v in values.items() if v is not None})

    monkeypatch.setattr(training, "train", lambda cfg, *a, **k: keep(**vars(cfg)) or {})
    monkeypatch.setattr(mnist_task, "run_moving_mnist", lambda cfg, *a, **k: keep(**vars(cfg)) or {})
    monkeypatch.setattr(action_task, "run_action", lambda cfg, *a, **k: keep(**vars(cfg)) or {})

    def video(**options):
        keep(layers=options["num_layers"], hidden=options["width"], batch_size=options["batch_size"],
             lr=options["lr"], image_size=options["size"])
        return video_task.VideoPredictionResult([0.0], [0.0], [0.0], [0.0], [0.0])

    monkeypatch.setattr(video_task, "run_video_prediction", lambda progress, **options: video(**options))
    return seen


@pytest.mark.parametrize("task, cell", [("moving-shapes", "cbm"), ("cat-dog", "cbm"), ("video-prediction", "cbm"),
                                        ("moving-fmnist", "cbm"), ("moving-fmnist", "convlstm"),
                                        ("moving-mnist", "convlstm"), ("action", "cbm")])
def test_the_defaults_in_the_help_are_those_each_task_runs_with(tmp_path, ran, task, cell):
    extra = ["--data-dir", str(tmp_path)] if task in ("moving-mnist", "action") else []
    assert main(["train", "--task", task, "--cell", cell, "--out", str(tmp_path / "run"), *extra]) == 0
    checked = 0
    for dest in ("layers", "hidden", "batch_size", "lr", "image_size"):
        if dest in ran:
            assert stated_default(dest, task, cell) == pytest.approx(ran[dest]), (task, dest)
            checked += 1
    assert checked >= 3, ran


def _sample_args(action):
    if action.nargs == 0:
        return [action.option_strings[0]]
    value = action.choices[0] if action.choices else {int: "3", float: "0.5"}.get(action.type, str(action.default))
    return [action.option_strings[0], str(value)]


def test_a_refused_option_names_the_task_and_exactly_the_tasks_that_take_it(tmp_path, ran, capsys):
    parser = dict(_parsers())["deeprnn train"]
    specific = [a for a in parser._actions
                if a.option_strings and a.dest not in ("help", "task", "out", "seed", "backend", "progress", "threads")]
    assert len(specific) > 20
    for action in specific:
        takers, stated = [], set()
        for task in TRAIN_TASKS:
            main(["train", "--task", task, *_sample_args(action), "--out", str(tmp_path / "run")])
            err = capsys.readouterr().err
            if f"{action.option_strings[0]}: is not an option" not in err:
                takers.append(task)
                continue
            refused = re.search(rf"{action.option_strings[0]}: is not an option of --task {task}; only of --task (.*)",
                                err)
            assert refused, err
            stated.add(refused.group(1))
        # every refusal lists exactly the tasks that did not refuse it
        assert stated <= {", ".join(takers)}, (action.dest, stated, takers)


def test_help_texts_say_what_the_issue_found_wrong():
    train = dict(_parsers())["deeprnn train"]
    assert "synthetic task" not in train.description
    assert "CBM backend" not in _train_help("backend") and "every recurrent cell" in _train_help("backend")
    assert "action" in _train_help("data_dir")
    assert stated_default("layers", "moving-fmnist", "cbm") == 15 and stated_default("layers", "moving-fmnist",
                                                                                     "convlstm") == 4
    assert stated_default("hidden", "moving-fmnist", "cbm") == 16 and stated_default("hidden", "moving-fmnist",
                                                                                     "convlstm") == 32


# --- outputs and progress of the tasks ---

TINY_MNIST = ["--layers", "2", "--hidden", "4", "--batch-size", "2", "--test-size", "3", "--threads", "1"]


def test_moving_mnist_writes_curves_and_a_checkpoint_that_resume_continues(tmp_path, capsys):
    data = tmp_path / "mnist"
    data.mkdir()
    _write_mnist_dir(data)
    run = ["train", "--task", "moving-mnist", "--data-dir", str(data), *TINY_MNIST, "--no-progress",
           "--out", str(tmp_path / "run")]
    assert main([*run, "--max-steps", "3"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("metrics.jsonl", "curves.png", "checkpoint.pt", "summary.json", "predictions.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert first["steps"] == 3
    assert main([*run, "--max-steps", "5", "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["steps"] == 5 and resumed["train_seconds"] >= first["train_seconds"]
    steps = [r["step"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if "step" in r]
    assert steps == [3, 5]
    # another architecture is refused in one line, the checkpoint left as it is
    assert main([*run[:-2], "--hidden", "6", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "--resume: checkpoint" in capsys.readouterr().err


def test_a_resumed_moving_mnist_run_draws_the_sequences_of_a_straight_one(tmp_path, capsys):
    data = tmp_path / "mnist"
    data.mkdir()
    _write_mnist_dir(data)
    base = ["train", "--task", "moving-mnist", "--data-dir", str(data), *TINY_MNIST, "--no-progress",
            "--backend", "reference"]
    assert main([*base, "--max-steps", "4", "--out", str(tmp_path / "straight")]) == 0
    assert main([*base, "--max-steps", "2", "--out", str(tmp_path / "split")]) == 0
    assert main([*base, "--max-steps", "4", "--out", str(tmp_path / "split"), "--resume"]) == 0
    capsys.readouterr()
    straight, split = (torch.load(tmp_path / d / "model.pt")["model"] for d in ("straight", "split"))
    for name in straight:
        torch.testing.assert_close(split[name], straight[name], msg=name)


@pytest.mark.parametrize("budget", [["--max-steps", "3"], ["--budget-minutes", "0.01"]])
def test_moving_mnist_bars_count_steps_and_time_left_evaluation_included(tmp_path, capsys, budget):
    data = tmp_path / "mnist"
    data.mkdir()
    _write_mnist_dir(data)
    assert main(["train", "--task", "moving-mnist", "--data-dir", str(data), *TINY_MNIST, *budget,
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "s/s" not in err and "step" in err
    assert re.search(r"\d\d:\d\d<\d\d:\d\d", err)  # elapsed < time left
    assert re.search(r"evaluating 2-layer cbm: .*\d+/\d+ \[\d\d:\d\d<", err)


def test_the_prediction_picture_is_labelled():
    videos = torch.rand(2, 5, 1, 8, 8)
    fig = mnist_task.prediction_figure(videos, torch.rand(2, 3, 1, 8, 8), observe=2, title="a title")
    ax = fig.axes[0]
    assert ax.get_title() == "a title"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1: true", "1: predicted", "2: true", "2: predicted"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "4", "5"]
    # the mark lies between the second frame (observed) and the third (the first predicted)
    ticks = ax.get_xticks()
    (mark,) = [line.get_xdata()[0] for line in ax.get_lines()]
    assert ticks[1] < mark < ticks[2]
    assert any("prediction" in t.get_text() for t in ax.texts)


def test_synthetic_training_shows_an_evaluation_bar(tmp_path, capsys):
    assert main(["train", "--task", "moving-shapes", "--layers", "1", "--hidden", "2", "--frames", "4",
                 "--image-size", "8", "--train-size", "4", "--test-size", "4", "--epochs", "1", "--batch-size", "4",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"epoch 1/1: .*\d+/\d+ \[\d\d:\d\d<.*step/s", err)
    assert re.search(r"evaluating: .*\d+/\d+ \[\d\d:\d\d<", err)


def test_video_prediction_writes_records_curves_and_summary(tmp_path, capsys):
    assert main(["train", "--task", "video-prediction", "--layers", "2", "--hidden", "2", "--image-size", "12",
                 "--train-size", "4", "--test-size", "2", "--epochs", "2", "--batch-size", "4",
                 "--backend", "reference", "--threads", "1", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"evaluating: .*\d+/\d+ \[\d\d:\d\d<", err)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "step" in r] == [1, 2]
    assert len(records[-1]["psnr"]) == 20
    assert (tmp_path / "curves.png").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["task"] == "video-prediction"
