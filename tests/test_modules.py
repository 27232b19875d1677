"""CBMCell, CBM and ConvLSTM modules: against hand-written loops, Temporal Dropout, shortcuts, errors."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from deeprnn_cuda import CBM, CBMCell, ConvLSTM
from deeprnn_cuda.reference import ACTIVATIONS, cbm_layer_ref
from helpers import assert_close_rel

# Every backend, the compiled one required: a missing extension fails these tests instead of shrinking the list.
BACKENDS = ["reference", "native"]
F64 = torch.float64
T, B, H, W = 3, 2, 5, 4


def randomize_(module: nn.Module) -> nn.Module:
    """Fresh random values in every parameter (biases included), float64."""
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return module


def rand(*shape, grad=False):
    return torch.randn(*shape, dtype=F64, requires_grad=grad)


def grads_of(outputs, inputs):
    """Gradients of a fixed random projection of ``outputs`` (seeded, so two calls see the same one)."""
    gen = torch.Generator().manual_seed(1234)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def ref_stack(x, m, c0=None, masks=None):
    """The stack as a per-layer loop of ``cbm_layer_ref``; x ``(T, B, C, H, W)``; no shortcuts."""
    out, finals, states = x, [], []
    for i, p in enumerate(m.layers):
        c_init = c0[i] if c0 is not None else x.new_zeros(x.shape[1], p.hidden_channels, *x.shape[-2:])
        out, c = cbm_layer_ref(
            out, p.weight_r, p.bias_r, p.weight_t, p.bias_t, c_init,
            td_mask=None if masks is None else masks[i], act_r=m.act_r, act_t=m.act_t, merge=m.merge,
        )
        finals.append(c[-1])
        states.append(c)
    return out, finals, states


def hand_cut_stack(x, m):
    """Independent per-step transcription of a mul-merge stack with the T path into x cut at every node."""
    f_r, f_t = ACTIVATIONS[m.act_r], ACTIVATIONS[m.act_t]
    out = x
    for p in m.layers:
        pad = p.kernel_size // 2
        c = x.new_zeros(x.shape[1], p.hidden_channels, *x.shape[-2:])
        outs = []
        for t in range(x.shape[0]):
            r = f_r(F.conv2d(out[t], p.weight_r, p.bias_r, padding=pad))
            c = f_t(F.conv2d(torch.cat([out[t].detach(), c], 1), p.weight_t, p.bias_t, padding=pad))
            outs.append(r * c)
        out = torch.stack(outs)
    return out


# ----------------------------------------------------------------------------- CBM against the reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "acts", [("relu", "sigmoid", "mul"), ("tanh", "relu", "add"), ("identity", "sigmoid", "mul")]
)
@pytest.mark.parametrize("bias", [True, False])
def test_cbm_matches_reference_loop(backend, acts, bias):
    act_r, act_t, merge = acts
    m = randomize_(CBM(3, [4, 2, 3], kernel_size=[3, 1, 5], num_layers=3, bias=bias,
                       act_r=act_r, act_t=act_t, merge=merge, backend=backend))
    x = rand(T, B, 3, H, W, grad=True)
    out, c_n = m(x)
    ref_out, ref_c, _ = ref_stack(x, m)
    assert_close_rel(out, ref_out, F64, "output")
    for i in range(3):
        assert c_n[i].shape == (B, m.hidden_channels[i], H, W)
        assert_close_rel(c_n[i], ref_c[i], F64, f"c_n[{i}]")
    inputs = [x, *m.parameters()]
    for g, g_ref, what in zip(grads_of([out, *c_n], inputs), grads_of([ref_out, *ref_c], inputs),
                              ["x"] + [n for n, _ in m.named_parameters()]):
        assert_close_rel(g, g_ref, F64, f"grad {what}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_is_one_step(backend):
    cell = randomize_(CBMCell(3, 4, kernel_size=3, act_r="tanh", backend=backend))
    x = rand(B, 3, H, W, grad=True)
    c = rand(B, 4, H, W, grad=True)
    o, c1 = cell(x, c)
    ref_o, ref_c = cbm_layer_ref(x[None], cell.weight_r, cell.bias_r, cell.weight_t, cell.bias_t, c, act_r="tanh")
    assert o.shape == c1.shape == (B, 4, H, W)
    assert_close_rel(o, ref_o[0], F64, "o")
    assert_close_rel(c1, ref_c[0], F64, "c")
    inputs = [x, c, *cell.parameters()]
    for g, g_ref in zip(grads_of([o, c1], inputs), grads_of([ref_o[0], ref_c[0]], inputs)):
        assert_close_rel(g, g_ref, F64, "grad")
    o0, _ = cell(x)
    assert_close_rel(o0, cell(x, torch.zeros_like(c))[0], F64, "c=None means zeros")


def test_cell_loop_equals_cbm():
    cell = randomize_(CBMCell(2, 3, backend="reference"))
    m = CBM(2, 3, backend="reference").double()
    m.layers[0].load_state_dict(cell.state_dict())
    x = rand(T, B, 2, H, W)
    c, outs = None, []
    for t in range(T):
        o, c = cell(x[t], c)
        outs.append(o)
    out, c_n = m(x)
    assert_close_rel(torch.stack(outs), out, F64, "output")
    assert_close_rel(c, c_n[0], F64, "state")


# ----------------------------------------------------------------------------- layout, initial states


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_first(backend):
    m = randomize_(CBM(3, [4, 2], num_layers=2, backend=backend))
    m_bf = CBM(3, [4, 2], num_layers=2, batch_first=True, backend=backend).double()
    m_bf.load_state_dict(m.state_dict())
    x = rand(T, B, 3, H, W)
    out, c_n, states = m(x, return_states=True)
    out_bf, c_n_bf, states_bf = m_bf(x.transpose(0, 1), return_states=True)
    assert out_bf.shape == (B, T, 2, H, W)
    assert_close_rel(out_bf, out.transpose(0, 1), F64, "output")
    for i in range(2):
        assert_close_rel(c_n_bf[i], c_n[i], F64, "c_n")
        assert states_bf[i].shape == (B, T, m.hidden_channels[i], H, W)
        assert_close_rel(states_bf[i], states[i].transpose(0, 1), F64, "states")


@pytest.mark.parametrize("backend", BACKENDS)
def test_c0_and_return_states(backend):
    # Seeded: with some draws every output of the last (relu, 2-channel, 1x1) layer is 0, c0 or not; an unseeded
    # draw after other tests made "c0 must matter" fail once (the oldest-torch CI stage, 2026-12-06).
    torch.manual_seed(0)
    m = randomize_(CBM(3, [4, 2], kernel_size=[3, 1], num_layers=2, backend=backend))
    x = rand(T, B, 3, H, W, grad=True)
    c0 = [rand(B, 4, H, W, grad=True), rand(B, 2, H, W, grad=True)]
    out, c_n, states = m(x, c0=c0, return_states=True)
    ref_out, ref_c, ref_states = ref_stack(x, m, c0=c0)
    assert_close_rel(out, ref_out, F64, "output")
    for i in range(2):
        assert states[i].shape == (T, B, m.hidden_channels[i], H, W)
        assert_close_rel(states[i], ref_states[i], F64, f"states[{i}]")
        assert torch.equal(states[i][-1], c_n[i])
        assert_close_rel(c_n[i], ref_c[i], F64, f"c_n[{i}]")
    for g, g_ref in zip(grads_of([out, *c_n], [x, *c0]), grads_of([ref_out, *ref_c], [x, *c0])):
        assert_close_rel(g, g_ref, F64, "grad")
    assert not torch.allclose(m(x)[0], out), "c0 must matter"


def test_per_layer_lists_shapes():
    m = CBM(3, [4, 5, 6], kernel_size=[1, 3, 5], num_layers=3, backend="reference")
    assert [tuple(p.weight_t.shape) for p in m.layers] == [(4, 7, 1, 1), (5, 9, 3, 3), (6, 11, 5, 5)]
    out, c_n = m(torch.randn(T, B, 3, H, W))
    assert out.shape == (T, B, 6, H, W)
    assert [tuple(c.shape) for c in c_n] == [(B, 4, H, W), (B, 5, H, W), (B, 6, H, W)]


def test_init_and_repr():
    m = CBM(8, 16, num_layers=2, init_gain=2.0, shortcut_every=1, backend="reference")
    for p in m.layers:
        assert torch.count_nonzero(p.bias_r) == 0 and torch.count_nonzero(p.bias_t) == 0
    # Xavier-normal: std = gain * sqrt(2 / (fan_in + fan_out)).
    w = m.layers[1].weight_t
    expected = 2.0 * (2.0 / ((32 + 16) * 9)) ** 0.5
    assert 0.8 * expected < w.std().item() < 1.2 * expected
    assert isinstance(m.shortcuts[0], nn.Conv2d) and isinstance(m.shortcuts[1], nn.Identity)
    text = repr(m)
    for piece in ("td_rate=0.0", "act_r='relu'", "shortcut_every=1", "backend='reference'", "CBMLayerParams"):
        assert piece in text


# ----------------------------------------------------------------------------- shortcuts


@pytest.mark.parametrize("backend", BACKENDS)
def test_shortcuts_identity_and_projection(backend):
    # Blocks of 2: layers 0-1 (3 -> 3, identity), layers 2-3 (3 -> 4, 1x1 conv); layer 4 fills no block.
    m = randomize_(CBM(3, [5, 3, 2, 4, 2], num_layers=5, shortcut_every=2, backend=backend))
    assert isinstance(m.shortcuts[0], nn.Identity) and isinstance(m.shortcuts[1], nn.Conv2d)
    assert len(m.shortcuts) == 2
    keys = [k for k in m.state_dict() if k.startswith("shortcuts")]
    assert keys == ["shortcuts.1.weight"] and m.shortcuts[1].bias is None
    x = rand(T, B, 3, H, W, grad=True)
    out, _ = m(x)

    def layer(i, inp):
        p = m.layers[i]
        zeros = inp.new_zeros(B, p.hidden_channels, H, W)
        return cbm_layer_ref(inp, p.weight_r, p.bias_r, p.weight_t, p.bias_t, zeros)[0]

    y = layer(1, layer(0, x)) + x
    y = layer(3, layer(2, y)) + per_frame(m.shortcuts[1], y)
    ref = layer(4, y)
    assert_close_rel(out, ref, F64, "output")
    inputs = [x, *m.parameters()]
    for g, g_ref in zip(grads_of([out], inputs), grads_of([ref], inputs)):
        assert_close_rel(g, g_ref, F64, "grad")


# ----------------------------------------------------------------------------- Temporal Dropout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("granularity", ["node", "sample"])
def test_td_keeps_forward(backend, granularity):
    m = randomize_(CBM(3, [4, 2], num_layers=2, td_rate=0.5, td_granularity=granularity, backend=backend))
    x = rand(T, B, 3, H, W)
    out_train, c_train = m.train()(x)
    out_eval, c_eval = m.eval()(x)
    assert_close_rel(out_train, out_eval, F64, "output")
    assert_close_rel(c_train[1], c_eval[1], F64, "state")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("granularity", ["node", "sample"])
def test_td_rate_one_cuts_t_path(backend, granularity):
    m = randomize_(CBM(3, [4, 2], num_layers=2, td_rate=1.0, td_granularity=granularity, backend=backend)).train()
    x = rand(T, B, 3, H, W, grad=True)
    out, _ = m(x)
    cut = hand_cut_stack(x, m)
    assert_close_rel(out, cut, F64, "output")
    inputs = [x, *m.parameters()]
    got, want = grads_of([out], inputs), grads_of([cut], inputs)
    for g, g_ref, name in zip(got, want, ["x"] + [n for n, _ in m.named_parameters()]):
        assert_close_rel(g, g_ref, F64, f"grad {name}")
    assert all(g.abs().sum() > 0 for g in got[1:]), "W_t and W_r still learn under TD"
    full = grads_of([ref_stack(x, m)[0]], [x])[0]
    assert not torch.allclose(got[0], full), "TD must change the gradient reaching x"


@pytest.mark.parametrize("backend", BACKENDS)
def test_td_eval_mode_has_no_mask(backend):
    m = randomize_(CBM(3, [4, 2], num_layers=2, td_rate=1.0, backend=backend)).eval()
    x = rand(T, B, 3, H, W, grad=True)
    assert m._td_masks(T, B, x.device) == [None, None]
    got = grads_of([m(x)[0]], [x])[0]
    assert_close_rel(got, grads_of([ref_stack(x, m)[0]], [x])[0], F64, "grad x")


def spy_td_masks(monkeypatch):
    """The ``td_mask`` of every ``cbm_layer`` call the modules make, in call order (the masks really used)."""
    import deeprnn_cuda.cbm as modules  # where CBM looks cbm_layer up

    seen, real = [], modules.cbm_layer

    def spy(*args, **kwargs):
        seen.append(kwargs.get("td_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(modules, "cbm_layer", spy)
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("granularity", ["node", "sample"])
def test_td_partial_uses_sampled_masks(monkeypatch, backend, granularity):
    """Gradients equal the reference stack's under the masks each layer was given."""
    m = randomize_(CBM(3, [4, 2], num_layers=2, td_rate=0.5, td_granularity=granularity, backend=backend)).train()
    x = rand(4, B, 3, H, W, grad=True)
    masks = spy_td_masks(monkeypatch)
    out, _ = m(x)
    assert [tuple(k.shape) for k in masks] == [(4,) if granularity == "node" else (4, B)] * 2
    got = grads_of([out], [x, *m.parameters()])
    monkeypatch.undo()
    want = grads_of([ref_stack(x, m, masks=masks)[0]], [x, *m.parameters()])
    for g, g_ref in zip(got, want):
        assert_close_rel(g, g_ref, F64, "grad")


@pytest.mark.parametrize("granularity", ["node", "sample"])
def test_td_coins_are_independent_per_layer_and_call(monkeypatch, granularity):
    """One coin per (layer, step[, sample]) at the TD rate: layers do not share a mask, calls redraw them.
    Two independent fair coins agree about half of the time; a shared mask agrees always."""
    torch.manual_seed(3)
    frames = 400
    m = CBM(1, 1, kernel_size=1, num_layers=3, td_rate=0.5, td_granularity=granularity, backend="reference").train()
    masks = spy_td_masks(monkeypatch)
    with torch.no_grad():
        m(torch.randn(frames, B, 1, 1, 1))
        m(torch.randn(frames, B, 1, 1, 1))
    shape = (frames,) if granularity == "node" else (frames, B)
    assert len(masks) == 6 and all(k.dtype == torch.bool and k.shape == shape for k in masks)
    for k in masks:
        assert 0.4 < k.double().mean().item() < 0.6
    for a, b in itertools.combinations(masks, 2):
        assert 0.4 < (a == b).double().mean().item() < 0.6


def test_td_masks_and_rate_attribute():
    m = CBM(2, 2, num_layers=3, backend="reference").train()
    assert m._td_masks(5, 2, torch.device("cpu")) == [None] * 3
    m.td_rate = 0.5
    masks = m._td_masks(4000, 2, torch.device("cpu"))
    assert len(masks) == 3 and all(k.dtype == torch.bool and k.shape == (4000,) for k in masks)
    assert 0.45 < torch.stack(masks).double().mean().item() < 0.55
    m.td_granularity = "sample"
    assert m._td_masks(5, 2, torch.device("cpu"))[0].shape == (5, 2)
    m.td_rate = 1
    assert m.td_rate == 1.0 and all(k.all() for k in m._td_masks(5, 2, torch.device("cpu")))
    for bad in (1.5, -0.1, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="td_rate"):
            m.td_rate = bad


# ----------------------------------------------------------------------------- state dict, backends


EXPECTED_KEYS = [
    f"layers.{i}.{n}" for i in range(3) for n in ("weight_r", "bias_r", "weight_t", "bias_t")
] + ["shortcuts.0.weight"]


@pytest.mark.parametrize("src,dst", [(a, b) for a, b in itertools.product(BACKENDS, BACKENDS) if a != b])
def test_state_dict_round_trip_across_backends(src, dst):
    a = randomize_(CBM(3, [4, 4, 2], num_layers=3, shortcut_every=2, backend=src))
    b = CBM(3, [4, 4, 2], num_layers=3, shortcut_every=2, backend=dst).double()
    assert list(a.state_dict()) == list(b.state_dict()) == EXPECTED_KEYS
    b.load_state_dict(a.state_dict())
    x = rand(T, B, 3, H, W)
    assert_close_rel(b(x)[0], a(x)[0], F64, f"{src} -> {dst}")
    a.backend = dst
    assert_close_rel(a(x)[0], b(x)[0], F64, "backend switched by attribute")


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    m = randomize_(CBM(2, [3, 3], num_layers=2, shortcut_every=2, backend=backend))
    x = rand(T, B, 2, H, W, grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out, c_n = compiled(x)
    ref, ref_c = m(x)
    assert_close_rel(out, ref, F64, "output")
    assert_close_rel(c_n[1], ref_c[1], F64, "state")
    assert_close_rel(grads_of([out], [x])[0], grads_of([ref], [x])[0], F64, "grad x")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"hidden_channels": -1}, "hidden_channels"),
        ({"hidden_channels": [4]}, "hidden_channels"),
        ({"hidden_channels": [4, 0]}, r"hidden_channels\[1\]"),
        ({"kernel_size": 2}, "kernel_size"),
        ({"kernel_size": [3, 3, 3]}, "kernel_size"),
        ({"kernel_size": [3, 4]}, r"kernel_size\[1\]"),
        ({"num_layers": 0, "hidden_channels": 4}, "num_layers"),
        ({"shortcut_every": -1}, "shortcut_every"),
        ({"init_gain": 0.0}, "init_gain"),
        ({"act_r": "gelu"}, "act_r"),
        ({"act_t": "tanh"}, "act_t"),
        ({"merge": "cat"}, "merge"),
        ({"backend": "cuda"}, "backend"),
        ({"td_granularity": "layer"}, "td_granularity"),
        ({"td_rate": 1.5}, "td_rate"),
        ({"td_rate": -0.5}, "td_rate"),
    ],
)
def test_cbm_bad_constructor_args(kwargs, name):
    args = {"in_channels": 3, "hidden_channels": [4, 4], "num_layers": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        CBM(**args)


@pytest.mark.parametrize(
    "kwargs,name",
    [({"in_channels": 0}, "in_channels"), ({"hidden_channels": [4, 4, 4]}, "hidden_channels"),
     ({"kernel_size": 4}, "kernel_size"), ({"shortcut_every": -2}, "shortcut_every"),
     ({"init_gain": -1}, "init_gain")],
)
def test_convlstm_bad_constructor_args(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ConvLSTM(**{"in_channels": 3, "hidden_channels": 4, "num_layers": 2, **kwargs})


@pytest.mark.parametrize(
    "kwargs,name",
    [({"in_channels": 0}, "in_channels"), ({"hidden_channels": 0}, "hidden_channels"),
     ({"kernel_size": 2}, "kernel_size"), ({"act_r": "x"}, "act_r"), ({"act_t": "x"}, "act_t"),
     ({"merge": "x"}, "merge"), ({"backend": "x"}, "backend")],
)
def test_cell_bad_constructor_args(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CBMCell(**{"in_channels": 3, "hidden_channels": 4, **kwargs})


def _bad_forward_cases():
    x = torch.randn(T, B, 3, H, W)
    good_c0 = [torch.randn(B, 4, H, W), torch.randn(B, 2, H, W)]
    return [
        ((x[0],), {}, "x"),
        ((torch.randn(T, B, 5, H, W),), {}, "x"),
        ((x[:0],), {}, "x"),
        ((x,), {"c0": good_c0[:1]}, "c0"),
        ((x,), {"c0": good_c0[0]}, "c0"),
        ((x,), {"c0": [good_c0[0], torch.randn(B, 3, H, W)]}, r"c0\[1\]"),
        ((x,), {"c0": [good_c0[0], torch.randn(B, 2, H + 1, W)]}, r"c0\[1\]"),
        ((x,), {"c0": [good_c0[0].double(), good_c0[1]]}, r"c0\[0\]"),
        ((x,), {"c0": [None, good_c0[1]]}, r"c0\[0\]"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_forward_cases())))
def test_cbm_bad_forward_inputs(case):
    args, kwargs, name = _bad_forward_cases()[case]
    m = CBM(3, [4, 2], num_layers=2, backend="reference")
    with pytest.raises(ValueError, match=name):
        m(*args, **kwargs)


def test_bad_forward_inputs_cell_and_convlstm():
    cell = CBMCell(3, 4, backend="reference")
    x = torch.randn(B, 3, H, W)
    for args, name in [((x[None],), "x"), ((x[:, :2],), "x"), ((x, torch.randn(B, 3, H, W)), "c")]:
        with pytest.raises(ValueError, match=name):
            cell(*args)
    with pytest.raises(TypeError, match="x"):
        cell([x])
    lstm = ConvLSTM(3, [4, 2], num_layers=2)
    xs = torch.randn(T, B, 3, H, W)
    h = [(torch.randn(B, 4, H, W),) * 2, (torch.randn(B, 2, H, W),) * 2]
    for c0, name in [(h[:1], "c0"), ([h[0], h[1][0]], r"c0\[1\]"),
                     ([h[0], (h[1][0], torch.randn(B, 4, H, W))], r"c0\[1\]\[1\]")]:
        with pytest.raises(ValueError, match=name):
            lstm(xs, c0=c0)
    with pytest.raises(ValueError, match="x"):
        lstm(torch.randn(T, B, 2, H, W))


# ----------------------------------------------------------------------------- ConvLSTM


def per_frame(proj, y):
    """A shortcut by hand: identity, or the 1x1 conv's weight applied to every frame of ``y (T, B, C, H, W)``."""
    if isinstance(proj, nn.Identity):
        return y
    return F.conv2d(y.flatten(0, 1), proj.weight).unflatten(0, y.shape[:2])


def naive_convlstm(x, m, init):
    """Per-step transcription: gates = conv(cat[x_t, h]) with the full weight; shortcuts only for every=1."""
    out, finals, hidden = x, [], []
    for i, conv in enumerate(m.layers):
        h, c = init[i]
        hs = []
        for t in range(x.shape[0]):
            gates = F.conv2d(torch.cat([out[t], h], 1), conv.weight, conv.bias, padding=m.kernel_size[i] // 2)
            gi, gf, go, gg = gates.chunk(4, 1)
            c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
            h = torch.sigmoid(go) * torch.tanh(c)
            hs.append(h)
        hidden.append(torch.stack(hs))
        out = hidden[-1] + per_frame(m.shortcuts[i], out) if m.shortcut_every == 1 else hidden[-1]
        finals.append((h, c))
    return out, finals, hidden


@pytest.mark.parametrize("bias", [True, False])
def test_convlstm_matches_naive(bias):
    m = randomize_(ConvLSTM(3, [4, 2], kernel_size=[3, 1], num_layers=2, bias=bias))
    x = rand(T, B, 3, H, W, grad=True)
    init = [(rand(B, 4, H, W, grad=True), rand(B, 4, H, W, grad=True)),
            (rand(B, 2, H, W, grad=True), rand(B, 2, H, W, grad=True))]
    out, c_n, states = m(x, c0=init, return_states=True)
    ref, ref_n, ref_states = naive_convlstm(x, m, init)
    assert out.shape == (T, B, 2, H, W)
    assert_close_rel(out, ref, F64, "output")
    for i in range(2):
        assert_close_rel(states[i], ref_states[i], F64, "states")
        for got, want in zip(c_n[i], ref_n[i]):
            assert_close_rel(got, want, F64, "final (h, c)")
    flat_init = [t for hc in init for t in hc]
    inputs = [x, *flat_init, *m.parameters()]
    got = grads_of([out, c_n[1][1]], inputs)
    for g, g_ref in zip(got, grads_of([ref, ref_n[1][1]], inputs)):
        assert_close_rel(g, g_ref, F64, "grad")
    assert all(g.abs().sum() > 0 for g in got)


def test_convlstm_shortcuts_batch_first_and_zero_init():
    m = randomize_(ConvLSTM(3, [3, 4], num_layers=2, shortcut_every=1))
    assert isinstance(m.shortcuts[0], nn.Identity) and isinstance(m.shortcuts[1], nn.Conv2d)
    assert list(m.state_dict()) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
                                    "shortcuts.1.weight"]
    x = rand(T, B, 3, H, W)
    zeros = [(x.new_zeros(B, C, H, W),) * 2 for C in (3, 4)]
    out, c_n = m(x)
    ref, ref_n, _ = naive_convlstm(x, m, zeros)
    assert_close_rel(out, ref, F64, "output")
    assert_close_rel(c_n[1][0], ref_n[1][0], F64, "h_n")
    m_bf = ConvLSTM(3, [3, 4], num_layers=2, shortcut_every=1, batch_first=True).double()
    m_bf.load_state_dict(m.state_dict())
    out_bf, _, states_bf = m_bf(x.transpose(0, 1), return_states=True)
    assert out_bf.shape == (B, T, 4, H, W) and states_bf[0].shape == (B, T, 3, H, W)
    assert_close_rel(out_bf, out.transpose(0, 1), F64, "batch_first")
