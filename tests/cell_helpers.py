"""Inputs and runners for the ConvLSTM / ConvGRU op tests (tests/test_cells.py, tests/test_cuda_cells.py)."""
import torch

from deeprnn_cuda import convgru_layer, convlstm_layer

CELLS = ("convlstm", "convgru")
#: which optional biases a case drops: every bias, none, or (ConvGRU) one of its two
BIAS_CASES = {"convlstm": ("both", "none"), "convgru": ("both", "none", "no_bias_x", "no_bias_h")}


def make_cell_inputs(cell, T, B, C_in, C, H, W, k=3, k_h=None, dtype=torch.float64, bias="both", seed=0,
                     device="cpu", states=True):
    """Random layer inputs requiring grad, drawn in float64 on the CPU (the same values for every dtype and
    device), scaled like a Xavier init; never zeros."""
    g = torch.Generator().manual_seed(seed)
    k_h = k if k_h is None else k_h

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype).requires_grad_()

    x = rnd(T, B, C_in, H, W)
    if cell == "convlstm":
        inputs = dict(x=x, weight=rnd(4 * C, C_in + C, k, k, scale=((C_in + C) * k * k) ** -0.5),
                      bias=rnd(4 * C, scale=0.1) if bias == "both" else None)
        if states:
            inputs.update(h0=rnd(B, C, H, W, scale=0.5), c0=rnd(B, C, H, W, scale=0.5))
        return inputs
    inputs = dict(x=x, weight_x=rnd(3 * C, C_in, k, k, scale=(C_in * k * k) ** -0.5),
                  bias_x=rnd(3 * C, scale=0.1) if bias in ("both", "no_bias_h") else None,
                  weight_h=rnd(3 * C, C, k_h, k_h, scale=(C * k_h * k_h) ** -0.5),
                  bias_h=rnd(3 * C, scale=0.1) if bias in ("both", "no_bias_x") else None)
    if states:
        inputs["h0"] = rnd(B, C, H, W, scale=0.5)
    return inputs


def layer(cell):
    return convlstm_layer if cell == "convlstm" else convgru_layer


def outputs(cell, result):
    """The layer's outputs as a list: [h, c] for ConvLSTM, [h] for ConvGRU."""
    return list(result) if cell == "convlstm" else [result]


def run_with_grads(cell, inputs, backend, seed=7):
    """Forward, then a backward with random cotangents on every output; returns outputs and every gradient."""
    outs = outputs(cell, layer(cell)(**inputs, backend=backend))
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)).sum() for o in outs)
    wrt = [t for t in inputs.values() if t is not None]
    return outs + list(torch.autograd.grad(loss, wrt))


def names(cell, inputs):
    """Labels of run_with_grads' results."""
    outs = ["h", "c"] if cell == "convlstm" else ["h"]
    return outs + [f"d{k}" for k, v in inputs.items() if v is not None]
