"""Training memory of the LDEQ training step vs max_iter, measured deterministically: the bytes
of every tensor autograd saves for backward during the training forward (what a step must keep
alive). Implicit (ift) and JFB training save the same amount for any max_iter; the explicit
unrolled baseline grows linearly with depth. (Process-level peak RSS numbers are in
benchmarks/bench_train_memory.py and docs/benchmarks.md.)"""
import pytest
import torch

from benchmarks_path import make_step  # noqa: E402  (tests/benchmarks_path.py adds benchmarks/)


def saved_bytes(mode, k, backward=False):
    step, images, max_iter = make_step(mode, k, image_size=64, B=1)
    seen = {}

    def pack(t):
        # count each storage once (views share it)
        try:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        except RuntimeError:
            key = (id(t), t.nbytes)
        seen[key] = key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step(images, max_iter)
    if backward:  # the measured graph is the one that trains
        out.keypoints.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in step.parameters())
    return sum(seen.values())


@pytest.mark.filterwarnings("ignore:implicit backward solve failed")
@pytest.mark.parametrize("mode", ["ift", "jfb"])
def test_implicit_training_memory_independent_of_max_iter(mode):
    small, large = saved_bytes(mode, 2, backward=True), saved_bytes(mode, 10)
    assert small > 0
    assert large == small


def test_explicit_unrolling_memory_grows_with_depth():
    # the control: the same measurement does see memory linear in the number of tracked steps
    d2, d6 = saved_bytes("explicit", 2), saved_bytes("explicit", 6)
    per_step = (d6 - d2) / 4  # bytes kept per extra tracked cell application
    assert per_step > 0.05 * d2
    # ift with a 6-iteration budget keeps less than an explicit unroll of depth 3
    assert saved_bytes("ift", 6) < d2 + per_step
