"""Training data: dataset construction, per-sample seeded augmentation and a resumable,
DistributedSampler-based stream of batches.

Determinism: sample i of epoch e is augmented under RNG seed hash(seed, e, i), independent of
worker count, rank or where a run was resumed; epoch e's order is DistributedSampler's
permutation for (seed, e); step s reads batch s mod (batches per epoch) of epoch s // that. So a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import random
from typing import Iterator, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .config import Config


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for (run seed, epoch, sample index) (splitmix64 finaliser)."""
    m = (1 << 64) - 1
    x = ((seed * 1_000_003 + epoch) * 2_147_483_647 + index) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return (x ^ (x >> 31)) >> 1


class SeededDataset(Dataset):
    """Runs ``base[i]`` under torch/numpy/random RNGs seeded from (seed, epoch, i), restoring the
    caller's RNG states afterwards (so loading data never perturbs the training RNG stream)."""

    def __init__(self, base: Dataset, seed: int, epoch: int):
        self.base, self.seed, self.epoch = base, seed, epoch

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        s = sample_seed(self.seed, self.epoch, i)
        np_state, py_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            np.random.seed(s % (2 ** 32))
            random.seed(s)
            try:
                return self.base[i]
            finally:
                np.random.set_state(np_state)
                random.setstate(py_state)


def batches_per_epoch(n: int, global_batch: int) -> int:
    if n < global_batch:
        raise ValueError(f"train.batch_size={global_batch} is larger than the training set ({n} images)")
    return n // global_batch


def batch_stream(dataset: Dataset, global_batch: int, rank: int, world_size: int, seed: int,
                 start_step: int, num_workers: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images, landmarks) batches for this rank, starting at global step ``start_step``.

    Each rank gets ``global_batch // world_size`` samples per step; the union over ranks of step s
    is exactly the single-process batch of step s (DistributedSampler deals the permutation
    round-robin, so ranks' shards of a slice of G consecutive indices make up that slice).
    """
    if global_batch % world_size:
        raise ValueError(f"train.batch_size={global_batch} must be divisible by the number of "
                         f"processes ({world_size})")
    per_rank = global_batch // world_size
    nb = batches_per_epoch(len(dataset), global_batch)
    epoch, offset = divmod(start_step, nb)
    while True:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        idx = list(sampler)
        batches = [idx[b * per_rank:(b + 1) * per_rank] for b in range(offset, nb)]
        loader = DataLoader(SeededDataset(dataset, seed, epoch), batch_sampler=batches,
                            num_workers=num_workers, persistent_workers=False)
        for images, landmarks in loader:
            yield images, landmarks
        epoch, offset = epoch + 1, 0


def build_datasets(cfg: Config, is_main: bool = True, barrier=lambda: None):
    """(train, test) for ``data.dataset``:

    'synthetic': procedural faces in the pre-cropped WFLW layout under ``data.root``; generated
    there first (by rank 0, the others wait at ``barrier``) when ``test.txt`` is missing.
    'wflw': either published WFLW layout under ``data.root``.
    Training images get the standard augmentation when ``data.augment``.
    """
    import os

    from ldeq.data.transforms import Augmenter
    from ldeq.data.wflw import wflw_dataset
    d, size = cfg.data, cfg.model.image_size
    if d.dataset not in ("synthetic", "wflw"):
        raise ValueError(f"data.dataset={d.dataset!r} is not an LDEQ dataset; expected 'synthetic' or 'wflw'")
    if d.dataset == "synthetic":
        # test.txt is written after train.txt: its presence means a complete export.
        if is_main and not os.path.isfile(os.path.join(d.root, "test.txt")):
            from ldeq.data.synthetic import export_wflw_cropped
            export_wflw_cropped(d.root, n_train=d.num_train, n_test=d.num_test, seed=0, out_size=size)
        barrier()
    elif not os.path.isdir(d.root):
        raise FileNotFoundError(f"data.root={d.root!r} does not exist; see docs/training.md for the WFLW layout")
    train = wflw_dataset(d.root, "train", out_size=size, augment=Augmenter() if d.augment else None)
    test = wflw_dataset(d.root, "test", out_size=size)
    if d.dataset == "synthetic" and (len(train), len(test)) != (d.num_train, d.num_test):
        raise ValueError(f"data.root={d.root!r} holds {len(train)} train / {len(test)} test synthetic images but "
                         f"data.num_train={d.num_train}, data.num_test={d.num_test}: use another data.root "
                         "or matching sizes")
    return train, test
