"""The official depth-4 hourglass of the LDEQ cell ("Cell0"), written out level by level.

Module names (same1, upchan1, ..., bottlneck [sic], downchan1..8, same5..8) and registration order
match the official state_dict so official checkpoints load strictly.
"""
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import Conv

ConvApply = Callable[[Conv, torch.Tensor], torch.Tensor]
MergeApply = Callable[[Conv, torch.Tensor, torch.Tensor], torch.Tensor]


class Hourglass(nn.Module):
    """(B, w, S, S) -> (B, w, S, S), S divisible by 16; widths w, w+i, w+2i, w+3i, w+4i.

    Encoder level k: same_k (k3) -> AvgPool2d(2) -> upchan_k (k3, to the next width).
    Bottleneck k3. Decoder level (deep to shallow): downchan (k3, to the skip width) -> nearest x2
    upsample -> concat [skip, up] -> 1x1 back to the skip width -> same (k5) + residual.
    """

    def __init__(self, base_width: int, width_increment: int, norm: str = "gn", gn_groups: int = 1):
        super().__init__()
        w, i = base_width, width_increment
        w0, w1, w2, w3, w4 = (w + k * i for k in range(5))
        kw = dict(norm=norm, gn_groups=gn_groups)
        self.same1 = Conv(w0, w0, 3, **kw)
        self.upchan1 = Conv(w0, w1, 3, **kw)
        self.same2 = Conv(w1, w1, 3, **kw)
        self.upchan2 = Conv(w1, w2, 3, **kw)
        self.same3 = Conv(w2, w2, 3, **kw)
        self.upchan3 = Conv(w2, w3, 3, **kw)
        self.same4 = Conv(w3, w3, 3, **kw)
        self.upchan4 = Conv(w3, w4, 3, **kw)
        self.bottlneck = Conv(w4, w4, 3, **kw)  # official spelling, kept for checkpoint keys
        self.downchan1 = Conv(w4, w3, 3, **kw)
        self.downchan2 = Conv(2 * w3, w3, 1, **kw)
        self.same5 = Conv(w3, w3, 5, **kw)
        self.downchan3 = Conv(w3, w2, 3, **kw)
        self.downchan4 = Conv(2 * w2, w2, 1, **kw)
        self.same6 = Conv(w2, w2, 5, **kw)
        self.downchan5 = Conv(w2, w1, 3, **kw)
        self.downchan6 = Conv(2 * w1, w1, 1, **kw)
        self.same7 = Conv(w1, w1, 5, **kw)
        self.downchan7 = Conv(w1, w0, 3, **kw)
        self.downchan8 = Conv(2 * w0, w0, 1, **kw)
        self.same8 = Conv(w0, w0, 5, **kw)

    def forward(self, x: torch.Tensor, conv: Optional[ConvApply] = None,
                merge: Optional[MergeApply] = None) -> torch.Tensor:
        """x (B, w, S, S) -> (B, w, S, S). ``conv(block, t)`` applies one Conv block (default
        ``block(t)``); ``merge(block, skip, d)`` a decoder merge, the 1x1 ``block`` on
        concat[skip, nearest_x2(d)] (default: exactly that); the packed inference path
        (:mod:`ldeq.model.fast`) passes its own."""
        c = conv or _call
        mg = merge or (lambda block, skip, d: c(block, torch.cat((skip, F.interpolate(d, scale_factor=2,
                                                                                     mode="nearest")), 1)))
        skips = []
        for same, up in ((self.same1, self.upchan1), (self.same2, self.upchan2),
                         (self.same3, self.upchan3), (self.same4, self.upchan4)):
            s = c(same, x)
            skips.append(s)
            x = c(up, F.avg_pool2d(s, 2, 2))
        x = c(self.bottlneck, x)
        for skip, down, merge, same in ((skips[3], self.downchan1, self.downchan2, self.same5),
                                        (skips[2], self.downchan3, self.downchan4, self.same6),
                                        (skips[1], self.downchan5, self.downchan6, self.same7),
                                        (skips[0], self.downchan7, self.downchan8, self.same8)):
            m = mg(merge, skip, c(down, x))
            y = c(same, m)
            # without autograd the block's fresh output takes the residual in place
            x = y.add_(m) if not torch.is_grad_enabled() and y.dtype == m.dtype else y + m
        return x


def _call(block: Conv, x: torch.Tensor) -> torch.Tensor:
    return block(x)
