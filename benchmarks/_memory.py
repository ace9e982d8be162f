"""Process memory figures for the memory benchmarks (Linux): /proc/self/status fields and the reset
of the peak-RSS counter, so the peak read after a step belongs to that step only."""


def status_kb(field: str) -> int:
    """A kB field of /proc/self/status ("VmRSS", "VmHWM", ...)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """VmHWM := the current RSS (writing 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
