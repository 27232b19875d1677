"""TD schedule, Overlap Coherence Training (sampler, waves, hand-off, loss) and atomic checkpoints."""
import pytest
import torch
import torch.nn as nn

from deeprnn_cuda import CBM
from deeprnn_cuda.training import (
    Clip,
    OverlapRunner,
    SequenceClassifier,
    TDSchedule,
    TrainConfig,
    load_checkpoint,
    overlap_coherence_loss,
    overlap_training_step,
    sample_clips,
    save_atomic,
    schedule_waves,
)
from helpers import assert_close_rel


# --- the clip sampler -------------------------------------------------------------------------------


@pytest.mark.parametrize("length,n_min,n_max", [(64, 2, 9), (20, 5, 5), (30, 3, 12), (9, 4, 9)])
def test_sampler_covers_with_overlapping_clips_in_bounds(length, n_min, n_max):
    for seed in range(20):
        clips = sample_clips(length, n_min, n_max, generator=torch.Generator().manual_seed(seed))
        covered = set()
        for i, clip in enumerate(clips):
            assert n_min <= len(clip) <= n_max and 0 <= clip.start < clip.stop <= length
            covered.update(range(clip.start, clip.stop))
            if i == 0:
                assert clip.start == 0
            else:
                prev = clips[i - 1]
                assert prev.start < clip.start < prev.stop  # starts later and overlaps the one before
        assert covered == set(range(length))
        assert clips[-1].stop == length


def test_sampler_overlap_rate_is_near_target_and_lengths_vary():
    g = torch.Generator().manual_seed(0)
    shared, total, lengths, starts = 0, 0, set(), set()
    for _ in range(200):
        clips = sample_clips(200, 8, 16, overlap=0.25, generator=g)
        for prev, clip in zip(clips[:-2], clips[1:-1]):  # the last clip may be moved back
            shared += prev.stop - clip.start
            total += len(clip)
            lengths.add(len(clip))
            starts.add(clip.start)
    assert 0.2 < shared / total < 0.3
    assert lengths == set(range(8, 17)) and len(starts) > 100


def test_sampler_is_deterministic_under_seed():
    def draw(seed):
        return sample_clips(64, 2, 9, generator=torch.Generator().manual_seed(seed))

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(length=10, n_min=6, n_max=5), "n_min must be <= n_max"),
        (dict(length=10, n_min=2, n_max=11), "n_max must be <= the sequence length 10"),
        (dict(length=10, n_min=1, n_max=4), "n_min must be >= 2"),
        (dict(length=10, n_min=2, n_max=4, overlap=1.0), "overlap must be in"),
    ],
)
def test_sampler_rejects_impossible_lengths(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_clips(**kwargs)


# --- waves and state hand-off -----------------------------------------------------------------------


def test_waves_batch_clips_whose_initial_state_is_known():
    clips = [Clip(0, 4), Clip(2, 6), Clip(3, 7), Clip(6, 9)]
    assert schedule_waves(clips) == [[0], [1, 2], [3]]
    with pytest.raises(ValueError, match="clips must each start"):
        schedule_waves([Clip(0, 3), Clip(5, 8)])
    # A clip needs the state just before its first frame, not its first frame: adjacent clips chain.
    assert schedule_waves([Clip(0, 3), Clip(3, 6), Clip(6, 8)]) == [[0], [1], [2]]


def _tiny_model(cell="cbm"):
    torch.manual_seed(0)
    return SequenceClassifier(cell, 3, 1, 3, 5, 6, shortcut_every=2, backend="reference").double().eval()


def test_handed_off_clips_give_exactly_the_full_sequence_outputs():
    model = _tiny_model()
    x = torch.randn(12, 2, 1, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        full, _ = model(x)
        clips = [Clip(0, 5), Clip(3, 8), Clip(4, 9), Clip(7, 12)]  # waves [[0], [1, 2], [3]]
        seen, batches = 0, []

        def counting_model(xs, states0, return_states):
            batches.append(xs.shape[1])
            return model(xs, states0, return_states=return_states)

        for wave in OverlapRunner(counting_model, clips).run(x):
            for item in wave:
                torch.testing.assert_close(item.outputs, full[item.clip.start : item.clip.stop], rtol=1e-12, atol=1e-12)
                seen += 1
        assert seen == len(clips)
        assert batches == [2, 4, 2]  # clips 1 and 2 ran together as one batch of 2 x 2 sequences
        # without the hand-off the later clips do not see the past, and their outputs differ
        later = [item for wave in OverlapRunner(model, clips, handoff=False).run(x) for item in wave][-1]
        assert not torch.allclose(later.outputs, full[7:12])


def test_runner_reports_overlaps_with_earlier_clips_only():
    model = _tiny_model()
    x = torch.randn(9, 1, 1, 6, 6, dtype=torch.float64)
    clips = [Clip(0, 4), Clip(2, 6), Clip(3, 7), Clip(5, 9)]
    with torch.no_grad():
        items = {item.index: item for wave in OverlapRunner(model, clips).run(x) for item in wave}
    assert items[0].overlap is None
    assert items[1].overlap[0].tolist() == [0, 1]  # frames 2, 3 from clip 0 (clip 2 runs in the same wave)
    assert items[2].overlap[0].tolist() == [0]  # frame 3
    assert items[3].overlap[0].tolist() == [0, 1]  # frames 5, 6 from clips 1 and 2
    torch.testing.assert_close(items[3].overlap[1], items[2].outputs[2:4])


# --- the overlap coherence loss and the training step ------------------------------------------------


def test_coherence_loss_is_lambda_mse_and_detaches_the_earlier_clip():
    out = torch.randn(3, 2, 4, requires_grad=True)
    earlier = torch.randn(3, 2, 4, requires_grad=True)
    loss = overlap_coherence_loss(out, earlier, lam=0.8)
    torch.testing.assert_close(loss, 0.8 * ((out - earlier) ** 2).mean())
    loss.backward()
    assert out.grad is not None and earlier.grad is None
    assert float(overlap_coherence_loss(out, out.detach().clone()).detach()) == 0.0
    with pytest.raises(ValueError, match="earlier must have the shape"):
        overlap_coherence_loss(out, earlier[:2])


def test_training_step_fills_gradients_and_handoff_makes_overlaps_coherent():
    model = _tiny_model().train()
    x = torch.randn(9, 2, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (9, 2))
    clips = [Clip(0, 4), Clip(2, 7), Clip(5, 9)]
    plain = overlap_training_step(model, x, y, clips, lam=0.0)
    assert plain["count"] == 2 * sum(len(c) for c in clips)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # same weights for every clip: the handed-off clips reproduce the overlaps, the coherence term is 0
    assert overlap_training_step(model, x, y, clips, lam=0.8)["loss"] == pytest.approx(plain["loss"], rel=1e-12)
    # from zeros they do not, and the term counts
    assert overlap_training_step(model, x, y, clips, lam=0.8, handoff=False)["loss"] > overlap_training_step(
        model, x, y, clips, lam=0.0, handoff=False
    )["loss"]


def test_coherence_compares_probabilities_by_default_or_logits_on_request():
    model = _tiny_model().train()
    x = torch.randn(6, 2, 1, 6, 6, dtype=torch.float64)
    y = torch.full((6, 2), -100)  # no labels: the loss is the coherence term alone
    clips = [Clip(0, 4), Clip(2, 6)]
    with torch.no_grad():
        first, _ = model(x[:4])
        second, _ = model(x[2:6])  # from zeros (no hand-off): frames 2, 3 disagree with the first clip
    for space, f in (("probabilities", lambda z: z.softmax(-1)), ("logits", lambda z: z)):
        stats = overlap_training_step(model, x, y, clips, lam=0.8, handoff=False, coherence_on=space)
        expected = 0.8 * nn.functional.mse_loss(f(second[:2]), f(first[2:4]))
        assert stats["loss"] == pytest.approx(float(expected) / 2, rel=1e-10)  # mean over the two clips
    with pytest.raises(ValueError, match="coherence_on"):
        overlap_training_step(model, x, y, clips, coherence_on="hidden")


def test_training_step_with_step_updates_after_every_wave():
    model = _tiny_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(9, 2, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (9, 2))
    clips = [Clip(0, 4), Clip(2, 7), Clip(5, 9)]
    steps = []

    def step():
        steps.append(1)
        optimizer.step()
        optimizer.zero_grad()

    with_coherence = overlap_training_step(model, x, y, clips, lam=0.8, step=step)
    assert len(steps) == 3  # one iteration per wave
    torch.manual_seed(0)
    model = _tiny_model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    steps.clear()
    without = overlap_training_step(model, x, y, clips, lam=0.0, step=step)
    # later waves meet outputs of earlier weights: the coherence term is no longer zero
    assert with_coherence["loss"] > without["loss"]


def _expected_wave_grads(model, x, y, clips, waves, lam, space):
    """An independent transcription of the paper's per-wave loss without the hand-off: every clip runs alone
    from zero states; its loss is the cross entropy on its labelled frames plus ``lam`` * the MSE between
    ``space`` of its outputs on frames an earlier wave produced and ``space`` of the latest such (detached)
    outputs; a wave's loss is the mean over its clips. Returns the parameter gradients of each wave's loss."""
    params = list(model.parameters())
    latest, grads = {}, []
    for wave in waves:
        loss, produced = 0.0, {}
        for i in wave:
            start, stop = clips[i]
            out, _ = model(x[start:stop])
            loss_i = nn.functional.cross_entropy(out.flatten(0, 1), y[start:stop].flatten(), ignore_index=-100)
            seen = [f for f in range(start, stop) if f in latest]
            if seen:
                mine = space(out[[f - start for f in seen]])
                theirs = space(torch.stack([latest[f] for f in seen]))
                loss_i = loss_i + lam * ((mine - theirs) ** 2).mean()
            loss = loss + loss_i / len(wave)
            produced.update({f: out[f - start].detach() for f in range(start, stop)})
        grads.append(torch.autograd.grad(loss, params))
        latest.update(produced)
    return grads


@pytest.mark.parametrize("coherence_on", ["probabilities", "logits"])
def test_training_step_gradients_match_the_per_wave_loss(coherence_on):
    """The gradients each wave's backward produces (not only the loss values): coherence pulls the later clip
    towards the detached earlier one, and each wave's loss is normalised by its own number of clips."""
    model = _tiny_model()
    x = torch.randn(9, 2, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (9, 2))
    y[1] = -100  # some unlabelled frames
    clips = [Clip(0, 4), Clip(2, 6), Clip(3, 7), Clip(5, 9)]
    waves = [[0], [1, 2], [3]]  # clip 3's frame 5 was produced by clips 1 and 2: clip 2's output is the latest
    space = (lambda z: z.softmax(-1)) if coherence_on == "probabilities" else (lambda z: z)
    expected = _expected_wave_grads(model, x, y, clips, waves, 0.7, space)
    got = []

    def step():  # records the wave's gradients; weights stay put, so every wave sees the same model
        got.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad()

    overlap_training_step(model, x, y, clips, lam=0.7, handoff=False, step=step, coherence_on=coherence_on)
    assert len(got) == len(waves)
    for w, (g_wave, e_wave) in enumerate(zip(got, expected)):
        for g, e in zip(g_wave, e_wave):
            assert_close_rel(g, e, torch.float64, f"wave {w}")
    # Without step: one backward of the mean over all clips, i.e. the waves' gradients weighted by their sizes.
    model.zero_grad()
    overlap_training_step(model, x, y, clips, lam=0.7, handoff=False, coherence_on=coherence_on)
    for i, p in enumerate(model.parameters()):
        total = sum(e_wave[i] * len(wave) for e_wave, wave in zip(expected, waves)) / len(clips)
        assert_close_rel(p.grad, total, torch.float64, "accumulated")


def test_single_whole_clip_is_plain_cross_entropy():
    model = _tiny_model()
    x = torch.randn(4, 3, 1, 6, 6, dtype=torch.float64)
    y = torch.full((4, 3), -100)
    y[-1] = torch.tensor([0, 1, 2])
    stats = overlap_training_step(model, x, y, [Clip(0, 4)])
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(x)[0][-1], y[-1])
    assert stats["loss"] == pytest.approx(float(expected), rel=1e-10)
    assert stats["count"] == 3


# --- the TD schedule --------------------------------------------------------------------------------


def test_td_schedule_default_is_the_papers():
    s = TDSchedule()
    assert [s.rate(e) for e in range(7)] == [1.0, 1.0, 0.8, 0.8, 0.5, 0.5, 0.5]
    assert TDSchedule.parse("1.0,0.8@2,0.5@4").rates == s.rates
    assert TDSchedule.parse("0.3").rate(100) == 0.3


def test_td_schedule_sets_every_cbm_module():
    model = nn.Sequential(CBM(1, 2, num_layers=2), nn.ModuleList([CBM(2, 2)]))
    assert TDSchedule().apply(model, 4) == 0.5
    assert [m.td_rate for m in model.modules() if isinstance(m, CBM)] == [0.5, 0.5]


@pytest.mark.parametrize(
    "spec,match", [("1.0,0.5", "td schedule must look like"), ("1.5", "rates must all be in"), ("1,0.5@3,0.2@2", "milestones")]
)
def test_td_schedule_rejects_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        TDSchedule.parse(spec)


# --- atomic checkpoints -----------------------------------------------------------------------------


def test_crash_mid_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"epoch": 1, "w": torch.ones(3)}, path)

    def crashing_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# --- task defaults ----------------------------------------------------------------------------------


def test_cat_dog_defaults_are_the_readme_settings_and_options_override_them():
    cfg = TrainConfig(task="cat-dog")
    assert (cfg.frames, cfg.image_size, cfg.hidden, cfg.train_size, cfg.test_size, cfg.epochs, cfg.batch_size, cfg.lr) == (
        64, 4, 64, 1024, 64, 150, 16, 2e-3
    )
    assert TrainConfig(task="cat-dog", hidden=32, epochs=3).hidden == 32
    shapes = TrainConfig()
    assert (shapes.frames, shapes.image_size, shapes.hidden, shapes.epochs, shapes.lr) == (8, 16, 8, 10, 3e-3)


def test_moving_shapes_defaults_are_the_demo_settings():
    # the README's `deeprnn train --task moving-shapes --cell cbm --layers 15` trains the demo's model (0.98 measured;
    # the former defaults overfit to 0.64)
    from deeprnn_cuda.cli import DEMO

    cfg = TrainConfig(task="moving-shapes", cell="cbm", layers=15)
    assert {k: getattr(cfg, k) for k in DEMO} == DEMO
