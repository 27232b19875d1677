"""``nn.Module`` front ends shaped like ``nn.LSTMCell`` / ``nn.LSTM`` / ``nn.GRU``, in one place: each lives in
its cell's module (:mod:`deeprnn_cuda.cbm`, :mod:`deeprnn_cuda.convlstm`, :mod:`deeprnn_cuda.convgru`), the
shared stack machinery in :mod:`deeprnn_cuda._stack`."""
from ._stack import IntOrList, _ConvRNNStack
from .cbm import CBM, TD_GRANULARITIES, CBMCell, CBMLayerParams
from .convgru import ConvGRU
from .convlstm import ConvLSTM

__all__ = ["CBM", "CBMCell", "CBMLayerParams", "ConvGRU", "ConvLSTM", "IntOrList", "TD_GRANULARITIES",
           "_ConvRNNStack"]
