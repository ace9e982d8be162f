"""The Landmark DEQ model: config, layers, hourglass, the LDEQ module and safe checkpoints."""
from .config import LDEQConfig
from .ldeq import LDEQ, Cell, DEQLayer, LDEQOutput, make_backbone

__all__ = ["LDEQConfig", "LDEQ", "Cell", "DEQLayer", "LDEQOutput", "make_backbone"]
from .checkpoint import (CheckpointError, config_from_checkpoint, load_checkpoint, read_checkpoint,  # noqa: E402
                         save_checkpoint)

__all__ += ["CheckpointError", "config_from_checkpoint", "load_checkpoint", "read_checkpoint", "save_checkpoint"]
