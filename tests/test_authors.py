"""The authors' RBM transcription and the loader of its weights into CBM (float64, exact to rounding)."""
import pytest
import torch

from deeprnn_cuda import CBM, _native
from deeprnn_cuda.authors import AuthorsRBM, authors_to_cbm_state_dict, infer_authors_config

BACKENDS = ["reference"] + (["native"] if _native.is_available() else [])
F64 = torch.float64
B, T, C_IN, H, W = 2, 3, 3, 5, 4


def exact(got, want, what):
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=lambda m: f"{what}: {m}")


def random_rbm(hidden, kernels, p_td=0.0, bias=True) -> AuthorsRBM:
    rbm = AuthorsRBM(C_IN, hidden, kernels, num_layers=len(hidden), p_TD=p_td, bias=bias).double()
    with torch.no_grad():
        for p in rbm.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return rbm


def their_weight_t_grad(ours: torch.Tensor, C: int) -> torch.Tensor:
    """Our weight_t gradient, input channels [x, c], in their [c, x] order."""
    C_in = ours.shape[1] - C
    return torch.cat([ours[:, C_in:], ours[:, :C_in]], dim=1)


def test_authors_rbm_parameters_and_shapes():
    rbm = AuthorsRBM(C_IN, [4, 2], [3, 5], num_layers=2)
    assert {k: tuple(v.shape) for k, v in rbm.state_dict().items()} == {
        "cell_list.0.data_cnn.weight": (4, 3, 3, 3), "cell_list.0.data_cnn.bias": (4,),
        "cell_list.0.ctrl_cnn.weight": (4, 7, 3, 3), "cell_list.0.ctrl_cnn.bias": (4,),
        "cell_list.1.data_cnn.weight": (2, 4, 5, 5), "cell_list.1.data_cnn.bias": (2,),
        "cell_list.1.ctrl_cnn.weight": (2, 6, 5, 5), "cell_list.1.ctrl_cnn.bias": (2,),
    }
    out, last = rbm(torch.randn(B, T, C_IN, H, W))
    assert out.shape == (B, T, 2, H, W) and [tuple(c.shape) for c in last] == [(B, 4, H, W), (B, 2, H, W)]
    with pytest.raises(ValueError, match="hidden_dim"):
        AuthorsRBM(C_IN, [4, 2], num_layers=3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hidden,kernels", [([4, 2], [3, 1]), ([3, 5, 2], [3, 5, 3])])
def test_loaded_cbm_reproduces_authors(backend, hidden, kernels):
    rbm = random_rbm(hidden, kernels)
    cbm = CBM.from_authors_state_dict(rbm.state_dict(), batch_first=True, backend=backend)
    assert cbm.hidden_channels == hidden and cbm.kernel_size == kernels and cbm.layers[0].weight_r.dtype == F64
    x = torch.randn(B, T, C_IN, H, W, dtype=F64, requires_grad=True)
    c0 = [torch.randn(B, C, H, W, dtype=F64, requires_grad=True) for C in hidden]
    out, last = rbm(x, c0)
    got, c_n = cbm(x, c0)
    exact(got, out, "output")
    for i in range(len(hidden)):
        exact(c_n[i], last[i], f"final state {i}")

    gen = torch.Generator().manual_seed(0)
    w_out = torch.randn(out.shape, generator=gen, dtype=F64)
    w_last = torch.randn(last[0].shape, generator=gen, dtype=F64)
    theirs = torch.autograd.grad((out * w_out).sum() + (last[0] * w_last).sum(), [x, *c0, *rbm.parameters()])
    ours = torch.autograd.grad((got * w_out).sum() + (c_n[0] * w_last).sum(), [x, *c0, *cbm.parameters()])
    n = 1 + len(hidden)
    for i in range(n):
        exact(ours[i], theirs[i], "grad of x / c0")
    their_grads = dict(zip([k for k, _ in rbm.named_parameters()], theirs[n:]))
    our_grads = dict(zip([k for k, _ in cbm.named_parameters()], ours[n:]))
    for i, C in enumerate(hidden):
        exact(our_grads[f"layers.{i}.weight_r"], their_grads[f"cell_list.{i}.data_cnn.weight"], "grad weight_r")
        exact(our_grads[f"layers.{i}.bias_r"], their_grads[f"cell_list.{i}.data_cnn.bias"], "grad bias_r")
        exact(their_weight_t_grad(our_grads[f"layers.{i}.weight_t"], C),
              their_grads[f"cell_list.{i}.ctrl_cnn.weight"], "grad weight_t")
        exact(our_grads[f"layers.{i}.bias_t"], their_grads[f"cell_list.{i}.ctrl_cnn.bias"], "grad bias_t")


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_into_existing_cbm_time_major_no_bias(backend):
    rbm = random_rbm([4, 2], [3, 3], bias=False)
    cbm = CBM(C_IN, [4, 2], num_layers=2, bias=False, act_r="tanh", backend=backend).double()
    cbm.load_authors_state_dict(rbm.state_dict())
    x = torch.randn(B, T, C_IN, H, W, dtype=F64)
    out, last = rbm(x)
    got, c_n = cbm(x.transpose(0, 1))
    exact(got.transpose(0, 1), out, "output")
    exact(c_n[1], last[1], "final state")


@pytest.mark.parametrize("backend", BACKENDS)
def test_authors_td_equals_cbm_node_td(backend):
    """p_TD=1 detaches every x on T's input: the same gradients as CBM's td_rate=1 in training mode."""
    rbm = random_rbm([4, 2], [3, 1], p_td=1.0)
    cbm = CBM.from_authors_state_dict(rbm.state_dict(), batch_first=True, td_rate=1.0, backend=backend).train()
    x = torch.randn(B, T, C_IN, H, W, dtype=F64, requires_grad=True)
    out, got = rbm(x)[0], cbm(x)[0]
    weights = torch.randn_like(out)
    g_theirs = torch.autograd.grad((out * weights).sum(), [x, rbm.cell_list[0].ctrl_cnn.weight])
    g_ours = torch.autograd.grad((got * weights).sum(), [x, cbm.layers[0].weight_t])
    exact(g_ours[0], g_theirs[0], "grad x")
    exact(their_weight_t_grad(g_ours[1], 4), g_theirs[1], "grad weight_t")
    cbm.td_rate = 0.0
    assert not torch.allclose(torch.autograd.grad((cbm(x)[0] * weights).sum(), x)[0], g_theirs[0])


def test_infer_authors_config():
    sd = random_rbm([3, 5, 2], [3, 5, 1], bias=False).state_dict()
    assert infer_authors_config(sd) == {
        "in_channels": C_IN, "hidden_channels": [3, 5, 2], "kernel_size": [3, 5, 1], "num_layers": 3, "bias": False,
    }
    mapped = authors_to_cbm_state_dict(sd, C_IN, [3, 5, 2], [3, 5, 1], bias=False)
    assert sorted(mapped) == sorted(CBM(C_IN, [3, 5, 2], [3, 5, 1], num_layers=3, bias=False).state_dict())
    assert torch.equal(mapped["layers.1.weight_t"][:, :3], sd["cell_list.1.ctrl_cnn.weight"][:, 5:])


def _sd(**changes):
    sd = dict(random_rbm([4, 2], [3, 3]).state_dict())
    sd.update(changes)
    return {k: v for k, v in sd.items() if v is not None}


@pytest.mark.parametrize(
    "kwargs,sd_changes,match",
    [
        ({}, {}, "act_r"),  # CBM default act_r="relu"
        ({"act_r": "tanh", "act_t": "relu", "merge": "add"}, {}, "act_t"),
        ({"act_r": "tanh", "merge": "add"}, {}, "merge"),
        ({"act_r": "tanh", "shortcut_every": 1}, {}, "shortcut_every"),
        ({"act_r": "tanh", "hidden_channels": [4, 2, 2], "num_layers": 3}, {}, "num_layers=3"),
        ({"act_r": "tanh", "hidden_channels": [4, 3]}, {}, r"cell_list\.1\.data_cnn\.weight"),
        ({"act_r": "tanh", "kernel_size": [3, 5]}, {}, r"cell_list\.1\.data_cnn\.weight"),
        ({"act_r": "tanh", "bias": False}, {}, "unexpected keys"),
        ({"act_r": "tanh"}, {"cell_list.1.ctrl_cnn.bias": None}, r"missing keys \['cell_list\.1\.ctrl_cnn\.bias'\]"),
        ({"act_r": "tanh"}, {"module.cell_list.0.data_cnn.weight": torch.zeros(1)}, "unexpected keys"),
        ({"act_r": "tanh"}, {"cell_list.0.ctrl_cnn.weight": torch.randn(4, 7, 1, 3, dtype=F64)},
         r"cell_list\.0\.ctrl_cnn\.weight"),
    ],
)
def test_loader_errors(kwargs, sd_changes, match):
    cbm = CBM(**{"in_channels": C_IN, "hidden_channels": [4, 2], "num_layers": 2, **kwargs}).double()
    with pytest.raises(ValueError, match=match):
        cbm.load_authors_state_dict(_sd(**sd_changes))


def test_from_authors_state_dict_errors():
    with pytest.raises(ValueError, match="state_dict"):
        CBM.from_authors_state_dict([1, 2])
    with pytest.raises(ValueError, match="empty"):
        CBM.from_authors_state_dict({})
    with pytest.raises(ValueError, match=r"cell_list\.0\.data_cnn\.weight"):
        CBM.from_authors_state_dict(_sd(**{"cell_list.0.data_cnn.weight": torch.randn(4, 3, 3, 1, dtype=F64)}))
    with pytest.raises(ValueError, match="kernel_size"):
        bad = {k: v[..., :2, :2] if v.dim() == 4 else v for k, v in _sd().items()}
        CBM.from_authors_state_dict(bad)
    with pytest.raises(ValueError, match="act_r"):
        CBM.from_authors_state_dict(_sd(), act_r="relu")
    with pytest.raises(ValueError, match="missing"):
        CBM.from_authors_state_dict(_sd(**{"cell_list.0.data_cnn.weight": None}))
