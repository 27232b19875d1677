"""``deeprnn train`` / ``compare`` options reach the code they name: each run is tiny, and the functions the
training loop calls are watched (the functions themselves are tested against independent sides elsewhere)."""
import subprocess
import sys

import pytest
import torch

import deeprnn_cuda.training.loop as loop
from deeprnn_cuda.cli import main
from test_cli import TINY, _env, _last_json, _same_weights

CLIPS = ["--clip-min", "2", "--clip-max", "3"]


@pytest.fixture
def watched(monkeypatch):
    """Record the arguments of the loop's calls to overlap_training_step, sample_clips, clip_grad_norm_ and
    the model it builds, passing every call through."""
    calls = {"step": [], "sample": [], "clip": [], "net": []}
    real_step, real_sample, real_clip = loop.overlap_training_step, loop.sample_clips, torch.nn.utils.clip_grad_norm_
    real_net = loop.SequenceClassifier

    def step(model, x, y, clips, lam, handoff, step=None, coherence_on="probabilities"):
        calls["step"].append(dict(clips=list(clips), lam=lam, handoff=handoff, coherence_on=coherence_on))
        return real_step(model, x, y, clips, lam, handoff, step=step, coherence_on=coherence_on)

    def sample(length, n_min, n_max, overlap, generator=None):
        calls["sample"].append(dict(length=length, n_min=n_min, n_max=n_max, overlap=overlap))
        return real_sample(length, n_min, n_max, overlap, generator)

    def clip(parameters, max_norm, *args, **kwargs):
        calls["clip"].append(max_norm)
        return real_clip(parameters, max_norm, *args, **kwargs)

    def net(*args, **kwargs):
        calls["net"].append(real_net(*args, **kwargs))
        return calls["net"][-1]

    monkeypatch.setattr(loop, "overlap_training_step", step)
    monkeypatch.setattr(loop, "sample_clips", sample)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(loop, "SequenceClassifier", net)
    return calls


def test_overlap_training_options_reach_the_training_step(tmp_path, capsys, watched):
    args = ["train", *TINY, "--epochs", "1", *CLIPS, "--overlap", "0.4", "--coherence-lambda", "0.3",
            "--coherence-on", "logits", "--no-handoff", "--grad-clip", "0.5", "--out", str(tmp_path)]
    assert main(args) == 0
    capsys.readouterr()
    assert watched["sample"] and all(s == dict(length=4, n_min=2, n_max=3, overlap=0.4) for s in watched["sample"])
    assert watched["step"] and all(
        s["lam"] == 0.3 and s["handoff"] is False and s["coherence_on"] == "logits" for s in watched["step"])
    assert all(2 <= len(c) <= 3 for s in watched["step"] for c in s["clips"])
    assert watched["clip"] and set(watched["clip"]) == {0.5}


def test_defaults_whole_sequences_handoff_and_clip_norm_one(tmp_path, capsys, watched):
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert watched["sample"] == []  # no --clip-max: whole sequences
    assert all(s["clips"] == [(0, 4)] and s["lam"] == 0.8 and s["handoff"] is True for s in watched["step"])
    assert watched["clip"] and set(watched["clip"]) == {1.0}


def test_grad_clip_zero_turns_clipping_off(tmp_path, capsys, watched):
    assert main(["train", *TINY, "--epochs", "1", "--grad-clip", "0", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert watched["step"] and watched["clip"] == []


@pytest.mark.parametrize("every,blocks", [(0, 0), (1, 3), (3, 1)])
def test_kernel_size_and_shortcut_every_shape_the_model(tmp_path, capsys, watched, every, blocks):
    args = ["train", *TINY, "--layers", "3", "--epochs", "1", "--kernel-size", "5", "--shortcut-every", str(every),
            "--out", str(tmp_path)]
    assert main(args) == 0
    capsys.readouterr()
    (net,) = watched["net"]
    assert len(net.rnn.shortcuts) == blocks  # one shortcut per full block of `every` layers
    weights = {k: v for k, v in torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"].items()
               if k.endswith(("weight_r", "weight_t"))}
    assert len(weights) == 6 and all(w.shape[-2:] == (5, 5) for w in weights.values())


def test_compare_cells_runs_only_the_cells_named(tmp_path, capsys):
    args = ["compare", *[a for a in TINY if a not in ("--layers", "2")], "--epochs", "1", "--cells", "convlstm",
            "--depths", "1,2", "--out", str(tmp_path)]
    assert main(args) == 0
    summaries = _last_json(capsys.readouterr().out)
    assert [(s["cell"], s["layers"]) for s in summaries] == [("convlstm", 1), ("convlstm", 2)]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["convlstm-1", "convlstm-2"]


@pytest.mark.parametrize("extra", [CLIPS, [*CLIPS, "--backend", "native"]], ids=["clips", "clips-native"])
def test_resume_is_exact_with_clip_training(tmp_path, capsys, extra):
    """Resuming replays the RNG of clip sampling and TD coins: the same weights as a straight run."""
    tiny = [*TINY, "--td-schedule", "1.0,0.5@1", "--lr-schedule", "constant", *extra]  # cosine depends on --epochs
    assert main(["train", *tiny, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *tiny, "--epochs", "1", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", *tiny, "--epochs", "2", "--resume", "--out", str(tmp_path / "split")]) == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["backend"] == ("native" if "native" in extra else "reference")
    _same_weights(tmp_path / "straight", tmp_path / "split")


@pytest.mark.slow
def test_torchrun_resume_is_exact(tmp_path):
    """Two CPU processes under torchrun: 1 epoch then --resume to 2 gives a straight 2-epoch run's weights."""
    tiny = [*TINY, "--td-schedule", "1.0,0.5@1", "--lr-schedule", "constant", *CLIPS, "--device", "cpu"]

    def torchrun(*args):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "deeprnn_cuda", "train", *tiny, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]

    torchrun("--epochs", "2", "--out", str(tmp_path / "straight"))
    torchrun("--epochs", "1", "--out", str(tmp_path / "split"))
    torchrun("--epochs", "2", "--resume", "--out", str(tmp_path / "split"))
    _same_weights(tmp_path / "straight", tmp_path / "split")
