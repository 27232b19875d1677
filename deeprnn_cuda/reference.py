"""The reference layers of every cell, in one place: each lives beside its op in the cell's module
(:mod:`deeprnn_cuda.cbm`, :mod:`deeprnn_cuda.convlstm`, :mod:`deeprnn_cuda.convgru`)."""
from .cbm import ACTIVATIONS, cbm_layer_ref
from .convgru import convgru_layer_ref
from .convlstm import convlstm_layer_ref

__all__ = ["ACTIVATIONS", "cbm_layer_ref", "convgru_layer_ref", "convlstm_layer_ref"]
