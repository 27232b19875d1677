"""deeprnn_cuda: the Deep RNN Framework (Pang et al., CVPR 2019) with fused kernels.

``cbm_layer`` is the functional Context Bridge Module over a whole sequence; ``CBM``, ``CBMCell`` and
``ConvLSTM`` are drop-in modules shaped like ``nn.LSTM``. Every op has a pure-PyTorch ``reference``
implementation and compiled ``native`` / ``triton`` backends that must agree with it.
"""
from . import _native  # noqa: F401  (registers the deeprnn:: ops when the extension is built)
from .backends import backend_status
from .functional import cbm_layer
from .modules import CBM, CBMCell, ConvLSTM
from .reference import cbm_layer_ref

__version__ = "0.1.0"

__all__ = ["CBM", "CBMCell", "ConvLSTM", "backend_status", "cbm_layer", "cbm_layer_ref", "__version__"]
