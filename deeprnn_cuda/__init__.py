"""deeprnn_cuda: the Deep RNN Framework (Pang et al., CVPR 2019) with fused kernels.

``cbm_layer``, ``convlstm_layer`` and ``convgru_layer`` run one layer of each cell over a whole sequence;
``CBM``, ``CBMCell``, ``ConvLSTM`` and ``ConvGRU`` are drop-in modules shaped like ``nn.LSTM`` / ``nn.GRU``. Every op has a pure-PyTorch ``reference``
implementation and compiled ``native`` / ``triton`` backends that must agree with it.
"""
from . import _native  # noqa: F401  (registers the deeprnn:: ops when the extension is built)
from .backends import backend_status
from .cbm import CBM, CBMCell, cbm_layer, cbm_layer_ref
from .convgru import ConvGRU, convgru_layer, convgru_layer_ref
from .convlstm import ConvLSTM, convlstm_layer, convlstm_layer_ref

__version__ = "0.1.0"

__all__ = [
    "CBM", "CBMCell", "ConvGRU", "ConvLSTM", "backend_status", "cbm_layer", "cbm_layer_ref", "convgru_layer",
    "convgru_layer_ref", "convlstm_layer", "convlstm_layer_ref", "__version__",
]
