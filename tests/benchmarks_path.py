"""Lets tests import helpers from benchmarks/ (not a package) without duplicating them."""
import os
import sys

_B = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if _B not in sys.path:
    sys.path.insert(0, _B)

from bench_train_memory import make_step  # noqa: E402,F401
