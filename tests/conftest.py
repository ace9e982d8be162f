"""Shared fixtures. CUDA cases are parametrised through ``device`` and skipped without a GPU;
no CUDA call happens at import time."""
import pytest
import torch

torch.set_num_threads(2)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="no CUDA device")
    if not torch.cuda.is_available():
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    """Each device test runs on 'cpu' and, where a GPU is present, on 'cuda'."""
    return torch.device(request.param)
