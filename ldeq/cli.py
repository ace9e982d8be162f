"""The ``ldeq`` command: ``ldeq {train,eval,video,demo} ...``; each sub-command lives in its own module."""
import importlib
import sys

COMMANDS = {
    "train": ("ldeq.train", "train a model (also: python -m ldeq.train)"),
    "eval": ("ldeq.evaluate", "evaluate a checkpoint: NME / FR@10 / AUC@10 per split, CED plot"),
    "video": ("ldeq.video.cli", "landmarks on a video with RwR, NME/NMF against ground truth"),
    "demo": ("ldeq.demo", "synthetic data -> train -> evaluate -> video, writes a report"),
}


def _usage() -> str:
    lines = ["usage: ldeq COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<6} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


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
