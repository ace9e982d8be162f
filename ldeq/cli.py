"""The ``ldeq`` command: ``ldeq {train,eval,video,predict,export,data,demo} ...``; each sub-command
lives in its own module.

Also the argument types the sub-commands share (:func:`positive_int`, :func:`finite_float`, ...):
argparse reports a value they refuse as ``error: argument --NAME: ...`` with exit code 2, before
the command does any work or writes any output.
"""
import argparse
import contextlib
import importlib
import math
import signal
import sys

COMMANDS = {
    "train": ("ldeq.train", "train a model (also: python -m ldeq.train)"),
    "eval": ("ldeq.evaluate", "evaluate a checkpoint: NME / FR@10 / AUC@10 per split, CED plot"),
    "video": ("ldeq.video.cli", "landmarks on a video with RwR, NME/NMF against ground truth"),
    "predict": ("ldeq.predict.cli", "landmarks of every face in images, folders, videos or a camera"),
    "export": ("ldeq.export", "export a checkpoint to ONNX (backbone + one RwR step)"),
    "data": ("ldeq.video.wflwv", "download datasets: 'ldeq data wflw-v --out ROOT' (needs ldeq[download])"),
    "demo": ("ldeq.demo", "synthetic data -> train -> evaluate -> video, writes a report"),
}


def _usage() -> str:
    lines = ["usage: ldeq COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


# --- argument types shared by the sub-commands ------------------------------------------------
def int_at_least(lo: int):
    """argparse type factory: an integer >= ``lo``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v
    parse.__name__ = f"int>={lo}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def finite_float(text: str) -> float:
    """argparse type: a finite float (NaN and +-inf refused)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def nonnegative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    v = finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside the block, SIGTERM (``kill PID``, a scheduler's stop) raises KeyboardInterrupt in the
    main thread, so a run's ``finally`` blocks flush partial outputs and remove temporary files as
    for Ctrl-C. Outside the main thread it does nothing. The previous handler is restored after."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ldeq: unknown command {name!r}; expected one of {sorted(COMMANDS)}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
