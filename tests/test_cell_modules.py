"""ConvLSTM / ConvGRU / CBM stacks on the cell ops: native against reference, nn.LSTM-like shapes, initial and
final states, bidirectional stacks against a by-hand composition of the reference layers, and checkpoints of
ndrplz/ConvLSTM_pytorch against a faithful re-implementation of its cell loop."""
import pytest
import torch
import torch.nn as nn

from deeprnn_cuda import CBM, ConvGRU, ConvLSTM, _native, cbm_layer_ref, convgru_layer_ref, convlstm_layer_ref
from helpers import assert_close_rel

F64 = torch.float64
T, B, H, W = 4, 2, 5, 6
BACKENDS = ["reference"] + (["native"] if _native.is_available() else [])


def rand(*shape, grad=False):
    return torch.randn(*shape, dtype=F64).requires_grad_(grad)


def randomize_(module):
    """Non-zero biases too, so every parameter matters."""
    module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return module


def reference_layer(cell, params, x, init):
    """(per-step outputs, final state, per-step states) of one layer direction, from the reference layer."""
    if cell == "cbm":
        c0 = init if init is not None else x.new_zeros(x.shape[1], params.weight_r.shape[0], *x.shape[3:])
        o, c = cbm_layer_ref(x, params.weight_r, params.bias_r, params.weight_t, params.bias_t, c0)
        return o, c[-1], c
    if cell == "convlstm":
        C = params.weight.shape[0] // 4
        h0, c0 = init if init is not None else (x.new_zeros(x.shape[1], C, *x.shape[3:]),) * 2
        h, c = convlstm_layer_ref(x, params.weight, params.bias, h0, c0)
        return h, (h[-1], c[-1]), h
    C = params.weight_h.shape[1]
    h0 = init if init is not None else x.new_zeros(x.shape[1], C, *x.shape[3:])
    h = convgru_layer_ref(x, params.weight_x, params.bias_x, params.weight_h, params.bias_h, h0)
    return h, h[-1], h


def by_hand(cell, m, x, init):
    """The stack composed from reference layers: each layer's reverse direction runs on the time-flipped input
    and its outputs are flipped back, both concatenated on channels (no shortcuts)."""
    out, finals = x, []
    D = 2 if m.bidirectional else 1
    for i in range(m.num_layers):
        outs = []
        for d, layers in enumerate([m.layers, m.layers_reverse] if D == 2 else [m.layers]):
            inp = out if d == 0 else out.flip(0)
            o, final, _ = reference_layer(cell, layers[i], inp, None if init is None else init[i * D + d])
            outs.append(o if d == 0 else o.flip(0))
            finals.append(final)
        out = torch.cat(outs, 2)
    return out, finals


def build(cell, **kwargs):
    cls = {"cbm": CBM, "convlstm": ConvLSTM, "convgru": ConvGRU}[cell]
    return randomize_(cls(3, [4, 2], kernel_size=[3, 1], num_layers=2, **kwargs))


def flat(finals):
    return [t for f in finals for t in (f if isinstance(f, tuple) else (f,))]


@pytest.mark.parametrize("cell", ["cbm", "convlstm", "convgru"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stack_matches_reference_layers_by_hand(cell, backend, bidirectional):
    m = build(cell, bidirectional=bidirectional, backend=backend)
    x = rand(T, B, 3, H, W, grad=True)
    out, finals = m(x)
    ref, ref_finals = by_hand(cell, m, x, None)
    D = 2 if bidirectional else 1
    assert out.shape == (T, B, 2 * D, H, W)
    assert len(finals) == 2 * D
    assert_close_rel(out, ref, F64, "output")
    for a, b in zip(flat(finals), flat(ref_finals)):
        assert_close_rel(a, b, F64, "final state")
    wrt = [x, *m.parameters()]
    got = torch.autograd.grad(out.square().sum() + flat(finals)[-1].sum(), wrt)
    want = torch.autograd.grad(ref.square().sum() + flat(ref_finals)[-1].sum(), wrt)
    for a, b in zip(got, want):
        assert_close_rel(a, b, F64, "gradient")


@pytest.mark.parametrize("cell", ["cbm", "convlstm", "convgru"])
def test_bidirectional_initial_states_and_batch_first(cell):
    m = build(cell, bidirectional=True)
    x = rand(T, B, 3, H, W)
    init = []
    for C in (4, 4, 2, 2):
        init.append((rand(B, C, H, W), rand(B, C, H, W)) if cell == "convlstm" else rand(B, C, H, W))
    out, finals = m(x, init)
    ref, ref_finals = by_hand(cell, m, x, init)
    assert_close_rel(out, ref, F64, "output")
    for a, b in zip(flat(finals), flat(ref_finals)):
        assert_close_rel(a, b, F64, "final state")
    m.batch_first = True
    out_bf, _, states = m(x.transpose(0, 1), init, return_states=True)
    assert_close_rel(out_bf, out.transpose(0, 1), F64, "batch_first")
    assert len(states) == 4 and states[1].shape == (B, T, 4, H, W)
    with pytest.raises(ValueError, match="2 \\* num_layers=4"):
        m(x.transpose(0, 1), init[:2])


def test_bidirectional_shortcuts_use_both_directions_channels():
    m = ConvGRU(3, 3, num_layers=2, shortcut_every=2, bidirectional=True)
    assert isinstance(m.shortcuts[0], nn.Conv2d) and m.shortcuts[0].weight.shape == (6, 3, 1, 1)
    assert m.layers[1].weight_x.shape == (9, 6, 3, 3)
    out, h_n = m(torch.randn(T, B, 3, H, W))
    assert out.shape == (T, B, 6, H, W) and len(h_n) == 4


def test_parameter_names_do_not_change_when_unidirectional():
    assert list(ConvLSTM(3, [4, 2], num_layers=2).state_dict()) == [
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    assert list(ConvGRU(3, 4, bias=False).state_dict()) == ["layers.0.weight_x", "layers.0.weight_h"]
    keys = list(CBM(3, 4, bidirectional=True).state_dict())
    assert keys == ["layers.0.weight_r", "layers.0.bias_r", "layers.0.weight_t", "layers.0.bias_t",
                    "layers_reverse.0.weight_r", "layers_reverse.0.bias_r", "layers_reverse.0.weight_t",
                    "layers_reverse.0.bias_t"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_convgru_module_per_layer_widths_kernels_and_states(backend):
    m = randomize_(ConvGRU(2, [3, 5], kernel_size=[5, 1], num_layers=2, batch_first=True, backend=backend))
    assert m.layers[0].weight_x.shape == (9, 2, 5, 5) and m.layers[1].weight_h.shape == (15, 5, 1, 1)
    x = rand(B, T, 2, H, W)
    h0 = [rand(B, 3, H, W), rand(B, 5, H, W)]
    out, h_n, states = m(x, h0, return_states=True)
    ref, ref_finals = by_hand("convgru", m, x.transpose(0, 1), h0)
    assert out.shape == (B, T, 5, H, W)
    assert_close_rel(out, ref.transpose(0, 1), F64, "output")
    for a, b in zip(h_n, ref_finals):
        assert_close_rel(a, b, F64, "h_n")
    assert_close_rel(states[0][:, -1], h_n[0], F64, "states")
    with pytest.raises(ValueError, match=r"h0\[1\] must have shape \(B=2, C=5"):
        m(x, [h0[0], rand(B, 3, H, W)])


# ----------------------------------------------------------------------------- ndrplz/ConvLSTM_pytorch


class NdrplzConvLSTMCell(nn.Module):
    """ndrplz/ConvLSTM_pytorch's cell, transcribed: one conv over cat([input, h_cur]), split i, f, o, g."""

    def __init__(self, input_dim, hidden_dim, kernel_size, bias):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.conv = nn.Conv2d(input_dim + hidden_dim, 4 * hidden_dim, kernel_size,
                              padding=(kernel_size[0] // 2, kernel_size[1] // 2), bias=bias)

    def forward(self, input_tensor, cur_state):
        h_cur, c_cur = cur_state
        combined_conv = self.conv(torch.cat([input_tensor, h_cur], dim=1))
        cc_i, cc_f, cc_o, cc_g = torch.split(combined_conv, self.hidden_dim, dim=1)
        i, f, o, g = torch.sigmoid(cc_i), torch.sigmoid(cc_f), torch.sigmoid(cc_o), torch.tanh(cc_g)
        c_next = f * c_cur + i * g
        return o * torch.tanh(c_next), c_next


class NdrplzConvLSTM(nn.Module):
    """ndrplz/ConvLSTM_pytorch's ConvLSTM (batch_first, return_all_layers=False), transcribed."""

    def __init__(self, input_dim, hidden_dim, kernel_size, num_layers, bias=True):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.cell_list = nn.ModuleList(
            NdrplzConvLSTMCell(input_dim if i == 0 else hidden_dim[i - 1], hidden_dim[i], kernel_size[i], bias)
            for i in range(num_layers)
        )

    def forward(self, input_tensor):
        b, seq_len, _, h, w = input_tensor.size()
        cur_layer_input = input_tensor
        for layer_idx, cell in enumerate(self.cell_list):
            hh = input_tensor.new_zeros(b, self.hidden_dim[layer_idx], h, w)
            cc = torch.zeros_like(hh)
            output_inner = []
            for t in range(seq_len):
                hh, cc = cell(cur_layer_input[:, t], [hh, cc])
                output_inner.append(hh)
            cur_layer_input = torch.stack(output_inner, dim=1)
        return [cur_layer_input], [[hh, cc]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
def test_ndrplz_checkpoint_loads_and_gives_the_same_outputs(backend, bias):
    torch.manual_seed(0)
    theirs = NdrplzConvLSTM(3, [4, 6], [(3, 3), (5, 5)], num_layers=2, bias=bias).double()
    ours = ConvLSTM.from_ndrplz_state_dict(theirs.state_dict(), batch_first=True, backend=backend)
    assert ours.hidden_channels == [4, 6] and ours.kernel_size == [3, 5] and ours.bias == bias
    x = rand(B, T, 3, H, W)
    (their_out,), ((their_h, their_c),) = theirs(x)
    out, finals = ours(x)
    assert_close_rel(out, their_out, F64, "output")
    assert_close_rel(finals[-1][0], their_h, F64, "h")
    assert_close_rel(finals[-1][1], their_c, F64, "c")


def test_ndrplz_mismatches_raise_value_error():
    sd = NdrplzConvLSTM(3, [4], [(3, 3)], num_layers=1).state_dict()
    with pytest.raises(ValueError, match="does not match"):
        ConvLSTM(3, 5).load_ndrplz_state_dict(sd)
    with pytest.raises(ValueError, match="not a ConvLSTM_pytorch key"):
        ConvLSTM(3, 4).load_ndrplz_state_dict({**sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="square odd"):
        ConvLSTM.from_ndrplz_state_dict(NdrplzConvLSTM(3, [4], [(3, 1)], num_layers=1).state_dict())
    with pytest.raises(ValueError, match="unidirectional"):
        ConvLSTM(3, 4, bidirectional=True).load_ndrplz_state_dict(sd)
