"""Progress bars of the long CPU loops (the warm start, ``vppo analyze``, ``vppo eval --backend hf``).

On stderr, which each Snakemake rule sends to its log. Into a file every redraw is kept, so off a terminal the
bar redraws at most every :data:`LOG_INTERVAL_S` seconds (plus once at the end): a few lines a minute per job.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL_S = 10.0


def progress(iterable=None, *, desc: str, total: int | None = None, unit: str = "it"):
    """A tqdm bar on stderr: live on a terminal, every LOG_INTERVAL_S seconds into a log file."""
    live = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, mininterval=0.1 if live else LOG_INTERVAL_S,
                maxinterval=LOG_INTERVAL_S, dynamic_ncols=live)
