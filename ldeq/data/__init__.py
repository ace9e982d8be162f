"""Face landmark data: WFLW loaders (both layouts), the square-box crop, training augmentation and the
procedural synthetic face dataset (the no-download default).

Every dataset returns ``(image, landmarks)``: float32 ``(3, S, S)`` ImageNet-normalised image and
float32 ``(98, 2)`` landmarks in crop units (crop pixels / S, so [0, 1) inside the crop).
"""
from .crop import compose_affine, invert_affine, square_crop_affine, transform_points, warp_image
from .synthetic import (FaceParams, SyntheticFaces, export_wflw_cropped, face_attributes, face_landmarks,
                        interpolate_params, random_face_params, render_face)
from .topology import FLIP_PERM, IOD_INDICES, NUM_LANDMARKS
from .transforms import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, Augmenter, denormalize, to_tensor
from .visualize import draw_landmarks, landmark_grid, write_png
from .wflw import (SPLITS, TEST_SUBSETS, WFLWCropped, WFLWFormatError, WFLWOriginal, detect_layout,
                   read_annotation_list, read_cropped_list, wflw_dataset)
