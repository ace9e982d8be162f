"""The Landmark DEQ model: config, layers, hourglass, the LDEQ module and safe checkpoints."""
from .config import LDEQConfig
from .ldeq import LDEQ, Cell, DEQLayer, LDEQOutput, make_backbone

__all__ = ["LDEQConfig", "LDEQ", "Cell", "DEQLayer", "LDEQOutput", "make_backbone"]
