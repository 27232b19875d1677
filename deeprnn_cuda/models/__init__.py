"""The paper's section-4 models, each with ``cell="cbm"|"convlstm"`` and a ``backend`` for its CBM layers.

* :class:`StandaloneDeepCBM`: the 17-layer action model shaped like ResNet-18 (recognition, anticipation).
* :class:`BackboneDeepCBM`: 15 recurrent layers on a per-frame CNN backbone's feature maps.
* :class:`PolygonRNNCore` / :class:`PolygonRNN`: Polygon-RNN's recurrent part per Table 5, and its decoder.
* :class:`DeepVideoPredictor`: MCnet with a deep recurrent motion encoder (observe 10, predict 20).
* :class:`PatchRecurrentPredictor`: a recurrent next-frame predictor on 4x4 patches (OpenSTL's layout).
"""
from .backbone import BackboneDeepCBM
from .polygon import PARAMS_OF_RNN, TABLE5, PolygonRNN, PolygonRNNCore, vertex_maps
from .patch_predictor import PatchRecurrentPredictor
from .predictor import DeepVideoPredictor
from .stack import CELLS, recurrent_stack, set_backend, set_td_rate
from .standalone import StandaloneDeepCBM

__all__ = [
    "BackboneDeepCBM",
    "CELLS",
    "DeepVideoPredictor",
    "PatchRecurrentPredictor",
    "PARAMS_OF_RNN",
    "PolygonRNN",
    "PolygonRNNCore",
    "StandaloneDeepCBM",
    "TABLE5",
    "recurrent_stack",
    "set_backend",
    "set_td_rate",
    "vertex_maps",
]
