"""The 98-point WFLW mark-up: index groups and the horizontal-flip permutation (reference section 6)."""
import numpy as np

NUM_LANDMARKS = 98

# Index groups (0-based) of the WFLW mark-up; "left" is the image left.
CONTOUR = tuple(range(0, 33))
BROW_LEFT = tuple(range(33, 42))      # 33-37 upper edge outer->inner, 38-41 lower edge inner->outer
BROW_RIGHT = tuple(range(42, 51))     # 42-46 upper edge inner->outer, 47-50 lower edge outer->inner
NOSE_BRIDGE = tuple(range(51, 55))    # top -> tip
NOSE_BASE = tuple(range(55, 60))      # left nostril -> right nostril
EYE_LEFT = tuple(range(60, 68))       # 60 outer corner, 61-63 upper lid, 64 inner corner, 65-67 lower lid
EYE_RIGHT = tuple(range(68, 76))      # 68 inner corner, 69-71 upper lid, 72 outer corner, 73-75 lower lid
MOUTH_OUTER = tuple(range(76, 88))    # 76 left corner, 77-81 upper, 82 right corner, 83-87 lower
MOUTH_INNER = tuple(range(88, 96))    # 88 left corner, 89-91 upper, 92 right corner, 93-95 lower
PUPILS = (96, 97)

GROUPS = {
    "contour": CONTOUR, "brow_left": BROW_LEFT, "brow_right": BROW_RIGHT, "nose_bridge": NOSE_BRIDGE,
    "nose_base": NOSE_BASE, "eye_left": EYE_LEFT, "eye_right": EYE_RIGHT, "mouth_outer": MOUTH_OUTER,
    "mouth_inner": MOUTH_INNER, "pupils": PUPILS,
}

# New index i takes old index FLIP_PERM[i] after a horizontal flip.
FLIP_PERM = np.array(
    list(range(32, -1, -1))
    + [46, 45, 44, 43, 42, 50, 49, 48, 47]
    + [37, 36, 35, 34, 33, 41, 40, 39, 38]
    + [51, 52, 53, 54]
    + [59, 58, 57, 56, 55]
    + [72, 71, 70, 69, 68, 75, 74, 73]
    + [64, 63, 62, 61, 60, 67, 66, 65]
    + [82, 81, 80, 79, 78, 77, 76]
    + [87, 86, 85, 84, 83]
    + [92, 91, 90, 89, 88]
    + [95, 94, 93]
    + [97, 96],
    dtype=np.int64,
)
assert FLIP_PERM.shape == (NUM_LANDMARKS,) and sorted(FLIP_PERM.tolist()) == list(range(NUM_LANDMARKS))

# Outer eye corners: the inter-ocular normaliser of the NME.
IOD_INDICES = (60, 72)
