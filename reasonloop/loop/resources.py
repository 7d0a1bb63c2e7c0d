"""What the process holds at the end of a round (resident memory, open files), so that a leak over
many rounds shows up in summary.json instead of as a crash on round 200."""

from __future__ import annotations

import os
import resource
import sys


def resources() -> dict[str, float | int | None]:
    """`rss_mb` now, `max_rss_mb` so far, `open_files`; None where the OS does not say."""
    rss = None
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    try:
        files: int | None = len(os.listdir("/proc/self/fd")) - 1  # minus listdir's own handle
    except OSError:
        files = None
    return {
        "rss_mb": None if rss is None else round(rss, 1),
        "max_rss_mb": round(peak_mb, 1),
        "open_files": files,
    }
