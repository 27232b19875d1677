"""The section-4 models: shapes, gradients, training, backend agreement and Table 6's parameter counts."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from deeprnn_cuda import CBM
from deeprnn_cuda.data.moving_digits import moving_digits
from deeprnn_cuda.models import (
    PARAMS_OF_RNN,
    TABLE5,
    BackboneDeepCBM,
    DeepVideoPredictor,
    PolygonRNN,
    PolygonRNNCore,
    StandaloneDeepCBM,
    recurrent_stack,
    set_backend,
    set_td_rate,
    vertex_maps,
)
from helpers import assert_close_rel

CELLS = ("cbm", "convlstm")
COMPILED = ["native"]  # required: a missing extension fails these tests instead of comparing reference with itself
K = 3  # classes of the action models


def _standalone(cell, backend="reference"):
    return StandaloneDeepCBM(K, in_channels=3, width=2, cell=cell, backend=backend, dropout=0.0)


def _backbone(cell, backend="reference"):
    return BackboneDeepCBM(
        K, in_channels=3, hidden_channels=3, backbone_width=2, cell=cell, backend=backend,
        feature_dropout=0.0, dropout=0.0,
    )


def _polygon(cell, backend="reference"):
    return PolygonRNN(2, cell, backend=backend, feature_channels=3, grid_size=4)


def _predictor(cell, backend="reference"):
    return DeepVideoPredictor(1, width=2, num_layers=3, cell=cell, backend=backend)


def _batch(kind):
    """A fixed tiny input and a loss function of ``(model, input)`` for each model kind."""
    g = torch.Generator().manual_seed(1)
    if kind in ("standalone", "backbone"):
        x = torch.rand(2, 3, 3, 16, 16, generator=g)
        labels = torch.tensor([0, 2])
        return x, lambda m, x: F.cross_entropy(m(x)[0], labels)
    if kind == "polygon":
        feats = torch.rand(2, 3, 4, 4, generator=g)
        vertices = torch.tensor([[1, 6, 11, 16, -100], [0, 3, 15, 12, 16]])
        return feats, lambda m, x: m.loss(x, vertices)
    videos = moving_digits(2, frames=5, size=8, num_digits=1, scale=1, seed=1)
    return videos, lambda m, x: F.mse_loss(m(x[:, :3], 2), x[:, 3:])


BUILDERS = {"standalone": _standalone, "backbone": _backbone, "polygon": _polygon, "predictor": _predictor}


# ---- Table 5 / Table 6 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", sorted(TABLE5))
def test_polygon_core_reproduces_table6_params(cell, num_layers):
    core = PolygonRNNCore(num_layers, cell)
    count = sum(p.numel() for p in core.parameters())
    assert round(count / 1e6, 2) == PARAMS_OF_RNN[cell][num_layers]


@pytest.mark.parametrize("cell", CELLS)
def test_polygon_core_is_table5(cell):
    core = PolygonRNNCore(15, cell)
    assert core.rnn.hidden_channels == [256] * 2 + [128] * 4 + [64] * 6 + [32] * 2 + [8]
    assert core.rnn.kernel_size == [3] * 15 and core.rnn.shortcut_every == 0 and core.rnn.in_channels == 131
    with pytest.raises(ValueError, match="num_layers"):
        PolygonRNNCore(3, cell)


def test_vertex_maps_one_hot_and_eos_empty():
    maps = vertex_maps(torch.tensor([[5, 16, -100]]), 4)
    assert maps.shape == (1, 3, 4, 4)
    assert maps[0, 0, 1, 1] == 1 and maps[0, 0].sum() == 1 and maps[0, 1:].sum() == 0


# ---- every model: forward, backward, training, backends ----------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_model_trains_on_tiny_batch(kind, cell):
    torch.manual_seed(0)
    model = BUILDERS[kind](cell)
    x, loss_fn = _batch(kind)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(8):
        loss = loss_fn(model, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_same_state_dict_same_outputs_across_backends(kind, cell, backend):
    torch.manual_seed(0)
    ref = BUILDERS[kind](cell, "reference").eval()
    other = BUILDERS[kind](cell, backend).eval()
    other.load_state_dict(ref.state_dict())
    assert list(ref.state_dict()) == list(other.state_dict())
    x, loss_fn = _batch(kind)
    ref_loss, other_loss = loss_fn(ref, x), loss_fn(other, x)
    ref_loss.backward()
    other_loss.backward()
    assert_close_rel(other_loss, ref_loss, torch.float32, f"{kind} loss")
    for (name, p), q in zip(ref.named_parameters(), other.parameters()):
        assert_close_rel(q.grad, p.grad, torch.float32, f"{kind} grad of {name}")


def test_set_backend_and_td_rate_reach_every_cbm():
    model = _standalone("cbm")
    set_backend(model, COMPILED[0])
    set_td_rate(model, 0.5)
    stacks = [m for m in model.modules() if isinstance(m, CBM)]
    assert len(stacks) == 5
    assert all(m.backend == COMPILED[0] and m.td_rate == 0.5 for m in stacks)


# ---- model-specific behaviour ------------------------------------------------------------------------------

def test_standalone_has_17_recurrent_layers_like_resnet18():
    model = _standalone("cbm")
    stacks = [model.stem, *model.stages]
    assert sum(s.num_layers for s in stacks) == 17
    assert model.stem.kernel_size == [7]
    assert [s.hidden_channels for s in model.stages] == [[2] * 4, [4] * 4, [8] * 4, [16] * 4]
    assert all(s.shortcut_every == 2 for s in model.stages)
    # stage 1 keeps its channels (identity shortcuts), later stages open with a 1x1-conv shortcut
    assert [type(s.shortcuts[0]).__name__ for s in model.stages] == ["Identity", "Conv2d", "Conv2d", "Conv2d"]


@pytest.mark.parametrize("kind", ["standalone", "backbone"])
def test_anticipation_uses_only_the_first_frames(kind):
    model = BUILDERS[kind]("cbm").eval()
    x, _ = _batch(kind)
    clip, frames = model(x)
    early_clip, early_frames = model.anticipate(x, num_frames=2)
    assert clip.shape == (2, K) and frames.shape == (2, 3, K)
    torch.testing.assert_close(early_frames, frames[:, :2])
    torch.testing.assert_close(early_clip, frames[:, :2].mean(dim=1))
    with pytest.raises(ValueError, match="num_frames"):
        model.anticipate(x, num_frames=4)


def test_backbone_has_15_layers_and_takes_a_module_backbone():
    model = _backbone("cbm")
    assert model.rnn.num_layers == 15 and model.rnn.shortcut_every == 2
    conv = torch.nn.Conv2d(3, 5, 3, stride=4, padding=1)
    custom = BackboneDeepCBM(K, hidden_channels=3, backbone=conv, backbone_channels=5)
    assert custom(torch.rand(1, 2, 3, 8, 8))[1].shape == (1, 2, K)
    with pytest.raises(ValueError, match="backbone_channels"):
        BackboneDeepCBM(K, backbone=conv)
    with pytest.raises(ValueError, match="backbone"):
        BackboneDeepCBM(K, backbone="alexnet")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_torchvision_backbone_without_torchvision_is_a_clear_error():
    with pytest.raises(ImportError, match="torchvision"):
        BackboneDeepCBM(K, backbone="vgg16")


def test_polygon_predict_is_greedy_and_stops_at_eos():
    torch.manual_seed(0)
    model = _polygon("cbm").eval()
    with torch.no_grad():
        model.head.bias[model.eos] = 1e3  # force end-of-polygon from the second vertex on
    out = model.predict(torch.rand(2, 3, 4, 4), max_vertices=4)
    assert out.shape == (2, 4)
    assert (out[:, 0] < model.eos).all() and (out[:, 1:] == model.eos).all()


def test_predictor_predicts_frames_in_range():
    model = _predictor("cbm")
    out = model(torch.rand(1, 3, 1, 8, 8), num_future=4)
    assert out.shape == (1, 4, 1, 8, 8) and (out >= 0).all() and (out <= 1).all()


@pytest.mark.parametrize("cell", ["cbm", "convlstm"])
def test_predictor_teacher_forced_steps_equal_one_step_closed_loop_predictions(cell):
    torch.manual_seed(0)
    model = _predictor(cell).double().eval()
    video = torch.rand(2, 6, 1, 8, 8, dtype=torch.float64)
    teacher_forced = model.predict_next(video)
    assert teacher_forced.shape == (2, 4, 1, 8, 8)
    for k in range(2, 6):  # frame k from the true frames 0..k-1
        torch.testing.assert_close(teacher_forced[:, k - 2], model(video[:, :k], num_future=1)[:, 0], rtol=1e-10, atol=1e-12)


def test_predictor_rejects_a_video_that_is_not_a_tensor():
    with pytest.raises(TypeError, match="video must be a torch.Tensor"):
        _predictor("cbm").predict_next([[0.0]])


def test_predictor_logits_are_the_frames_before_the_sigmoid():
    torch.manual_seed(0)
    model = _predictor("cbm").eval()
    video = torch.rand(1, 5, 1, 8, 8)
    torch.testing.assert_close(torch.sigmoid(model(video[:, :3], 2, logits=True)), model(video[:, :3], 2))
    torch.testing.assert_close(torch.sigmoid(model.predict_next(video, logits=True)), model.predict_next(video))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: StandaloneDeepCBM(K, width=2, cell="lstm"), "cell"),
        (lambda: StandaloneDeepCBM(K, width=2, backend="cuda"), "backend"),
        (lambda: StandaloneDeepCBM(K, width=0), "width"),
        (lambda: recurrent_stack("convlstm", 2, 2, 1, td_rate=0.5), "td_rate"),
        (lambda: DeepVideoPredictor(width=2, num_layers=1)(torch.rand(1, 3, 1, 6, 8)), "divisible by 4"),
        (lambda: DeepVideoPredictor(width=2, num_layers=1).predict_next(torch.rand(1, 2, 1, 8, 8)), "T>=3"),
        (lambda: DeepVideoPredictor(width=2, num_layers=1)(torch.rand(1, 3, 2, 8, 8)), "C=1"),
        (lambda: StandaloneDeepCBM(K, width=2)(torch.rand(1, 2, 3, 15, 16)), "even"),
        (lambda: _polygon("cbm")(torch.rand(1, 3, 5, 5), torch.zeros(1, 3).long()), "features"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(build, message):
    with pytest.raises(ValueError, match=message):
        build()
