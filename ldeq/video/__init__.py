"""RwR video pipeline: video I/O and face boxes, Recurrence-without-Recurrence inference
(off / warm / prox), temporal filter baselines, video NME / NMF, the WFLW-V loader, synthetic videos.

Submodules are imported on demand (``from ldeq.video.metrics import video_nmf``) so that importing
``ldeq.video`` stays light.
"""
