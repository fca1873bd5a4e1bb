"""Reads a benchmark's results file: one `LABEL WALL_SECONDS PEAK_RSS_KIB` line per run."""

import statistics


def medians(path):
    """Returns (runs, medians): label -> [(wall, rss)], label -> (median wall, median rss)."""
    runs = {}
    for line in open(path):
        label, wall, rss = line.split()
        runs.setdefault(label, []).append((float(wall), int(rss)))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(r for _, r in v))
           for k, v in runs.items()}
    return runs, med
