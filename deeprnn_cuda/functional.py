"""The functional layers of every cell, one entry point each with every backend behind it; each lives in its
cell's module (:mod:`deeprnn_cuda.cbm`, :mod:`deeprnn_cuda.convlstm`, :mod:`deeprnn_cuda.convgru`)."""
from .cbm import cbm_layer
from .convgru import convgru_layer
from .convlstm import convlstm_layer

__all__ = ["cbm_layer", "convgru_layer", "convlstm_layer"]
