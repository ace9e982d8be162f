"""ldeq: Deep Equilibrium solvers, the Landmark DEQ (LDEQ) and the RwR video pipeline.

Importing ``ldeq`` is light on purpose: ``ldeq.solvers`` is a model-agnostic package and must not
pull in the landmark model. Submodules (``ldeq.ops``, ``ldeq.model``, ``ldeq.data``, ...) are
imported on demand.
"""
__version__ = "0.1.0"
