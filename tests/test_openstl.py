"""OpenSTL's ConvLSTM loads into this library's ConvLSTM and patch predictor (issue 25, part 4).

The other side is a transcription of OpenSTL's ``ConvLSTMCell`` (openstl/modules/convlstm_modules.py),
``ConvLSTM_Model`` (openstl/models/convlstm_model.py) and ``reshape_patch`` (openstl/utils/predrnn_utils.py),
written here from their equations: convolutions ``conv_x`` and ``conv_h`` without bias, gates split i, f, g, o,
``c = f * c + i * g``, ``h = o * tanh(c)``; frames patched to ``(B, T, H/p, W/p, p*p*C)``; a bias-free 1x1
``conv_last``; the output fed back after the observed frames.
"""
import pytest
import torch
import torch.nn as nn

from deeprnn_cuda import ConvLSTM
from deeprnn_cuda import _native
from deeprnn_cuda.models.patch_predictor import PatchRecurrentPredictor

BACKENDS = ["reference"] + (["native"] if _native.is_available() else [])


class OpenSTLCell(nn.Module):
    """OpenSTL's ConvLSTMCell with ``layer_norm=0`` (or 1), parameters under OpenSTL's names."""

    def __init__(self, in_channel: int, num_hidden: int, height: int, width: int, k: int, layer_norm: bool = False):
        super().__init__()
        self.num_hidden = num_hidden

        def conv(cin, cout, norm_shape):
            layers = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)]
            if layer_norm:
                layers.append(nn.LayerNorm(norm_shape))
            return nn.Sequential(*layers)

        self.conv_x = conv(in_channel, 4 * num_hidden, [4 * num_hidden, height, width])
        self.conv_h = conv(num_hidden, 4 * num_hidden, [4 * num_hidden, height, width])
        self.conv_o = conv(2 * num_hidden, num_hidden, [num_hidden, height, width])
        self.conv_last = nn.Conv2d(2 * num_hidden, num_hidden, 1, bias=False)

    def forward(self, x, h, c):
        i_x, f_x, g_x, o_x = torch.split(self.conv_x(x), self.num_hidden, dim=1)
        i_h, f_h, g_h, o_h = torch.split(self.conv_h(h), self.num_hidden, dim=1)
        i, f, g = torch.sigmoid(i_x + i_h), torch.sigmoid(f_x + f_h), torch.tanh(g_x + g_h)
        c = f * c + i * g
        h = torch.sigmoid(o_x + o_h) * torch.tanh(c)
        return h, c


def reshape_patch(frames, p):
    """OpenSTL's reshape_patch: ``(B, T, H, W, C)`` -> ``(B, T, H/p, W/p, p*p*C)``."""
    B, T, H, W, C = frames.shape
    a = frames.reshape(B, T, H // p, p, W // p, p, C).transpose(3, 4)
    return a.reshape(B, T, H // p, W // p, p * p * C)


def reshape_patch_back(patches, p):
    """OpenSTL's reshape_patch_back, the inverse."""
    B, T, Hp, Wp, D = patches.shape
    C = D // (p * p)
    a = patches.reshape(B, T, Hp, Wp, p, p, C).transpose(3, 4)
    return a.reshape(B, T, Hp * p, Wp * p, C)


class OpenSTLModel(nn.Module):
    """OpenSTL's ConvLSTM_Model at test time (no scheduled sampling: every frame after the observed is x_gen)."""

    def __init__(self, num_hidden, channels, height, width, patch, k, layer_norm=False):
        super().__init__()
        self.patch, self.num_hidden = patch, num_hidden
        frame_channel = patch * patch * channels
        self.cell_list = nn.ModuleList(
            OpenSTLCell(frame_channel if i == 0 else num_hidden[i - 1], n, height // patch, width // patch, k, layer_norm)
            for i, n in enumerate(num_hidden))
        self.conv_last = nn.Conv2d(num_hidden[-1], frame_channel, 1, bias=False)

    def forward(self, video, pre_seq_length):
        """``video (B, T, C, H, W)`` -> the frames OpenSTL predicts after the first ``pre_seq_length``."""
        frames = reshape_patch(video.permute(0, 1, 3, 4, 2), self.patch).permute(0, 1, 4, 2, 3)
        B, T, _, Hp, Wp = frames.shape
        h = [torch.zeros(B, n, Hp, Wp) for n in self.num_hidden]
        c = [torch.zeros(B, n, Hp, Wp) for n in self.num_hidden]
        outputs = []
        for t in range(T - 1):
            net = frames[:, t] if t < pre_seq_length else x_gen  # noqa: F821 (set at t = 0)
            h[0], c[0] = self.cell_list[0](net, h[0], c[0])
            for i in range(1, len(self.cell_list)):
                h[i], c[i] = self.cell_list[i](h[i - 1], h[i], c[i])
            x_gen = self.conv_last(h[-1])
            outputs.append(x_gen)
        out = torch.stack(outputs, 1).permute(0, 1, 3, 4, 2)
        return reshape_patch_back(out, self.patch).permute(0, 1, 4, 2, 3)[:, pre_seq_length - 1:]


def _openstl(channels=1, patch=2, hidden=(6, 6), k=3, layer_norm=False, seed=0) -> OpenSTLModel:
    torch.manual_seed(seed)
    model = OpenSTLModel(list(hidden), channels, 8, 8, patch, k, layer_norm)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels, patch", [(1, 2), (3, 2), (2, 4)])
@pytest.mark.parametrize("prefix", ["", "model."])
def test_openstl_model_predicts_the_same_frames(backend, channels, patch, prefix):
    theirs = _openstl(channels, patch)
    video = torch.rand(2, 6, channels, 8, 8)
    state = {prefix + k: v for k, v in theirs.state_dict().items()}
    ours = PatchRecurrentPredictor.from_openstl_state_dict(state, patch=patch, backend=backend)
    with torch.no_grad():
        expected = theirs(video, 3)
        got = ours(video[:, :3], 3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_openstl_cells_load_into_the_convlstm_stack(backend):
    theirs = _openstl(channels=1, patch=1, hidden=(5, 7), k=5)
    x = torch.randn(4, 3, 1, 8, 8)
    ours = ConvLSTM.from_openstl_state_dict(theirs.state_dict(), backend=backend)
    h = [torch.zeros(3, n, 8, 8) for n in (5, 7)]
    c = [torch.zeros(3, n, 8, 8) for n in (5, 7)]
    expected = []
    for t in range(4):
        inp = x[t]
        for i, cell in enumerate(theirs.cell_list):
            h[i], c[i] = cell(inp, h[i], c[i])
            inp = h[i]
        expected.append(inp)
    with torch.no_grad():
        out, final = ours(x)
    torch.testing.assert_close(out, torch.stack(expected), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(final[1][1], c[1], rtol=1e-4, atol=1e-5)


def test_layer_norm_checkpoints_are_refused():
    state = _openstl(layer_norm=True).state_dict()
    with pytest.raises(ValueError, match="layer_norm=1"):
        PatchRecurrentPredictor.from_openstl_state_dict(state, patch=2)
    with pytest.raises(ValueError, match="layer_norm=1"):
        ConvLSTM.from_openstl_state_dict(state)


def test_other_state_dicts_and_wrong_patch_are_refused():
    with pytest.raises(ValueError, match="not an OpenSTL ConvLSTM"):
        ConvLSTM.from_openstl_state_dict({"cell_list.0.conv.weight": torch.zeros(8, 3, 3, 3)})
    with pytest.raises(ValueError, match="patch"):
        PatchRecurrentPredictor.from_openstl_state_dict(_openstl(channels=1, patch=2).state_dict(), patch=4)
