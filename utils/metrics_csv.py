"""metrics.csv, a run's per-epoch record: one row per epoch appended as it ends, read back line by line, and
trimmed to the epochs a resumed run keeps."""
import csv
import os

from .runs import atomic_write, open_regular

METRIC_FIELDS = ["epoch", "phase", "lr", "loss", "natural", "pgd20", "budget_mean", "eps_share", "own_mask_share",
                 "epoch_time_s", "eval_time_s", "peak_mem_mb"]  # later columns are blank in older files


def append_metrics(path: str, row: dict) -> None:
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k) for k in METRIC_FIELDS})
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: str) -> list[dict]:
    """The readable rows of a metrics.csv: each line is read on its own, so a line that is no CSV row (a field
    past the csv module's size limit, a broken quote) or whose epoch is not a whole number is skipped, never the
    file; none when it is missing or no regular file."""
    try:
        with open_regular(path, newline="", errors="replace") as f:
            lines = f.read().split("\n")  # this module writes no field with a newline in it
    except OSError:  # missing, or no regular file (a FIFO would block): no readable row
        return []
    try:
        header = next(csv.reader([lines[0].rstrip("\r")]), [])
    except csv.Error:
        return []
    rows = []
    for line in lines[1:]:
        try:
            r = next(csv.DictReader([line.rstrip("\r")], fieldnames=header), None)
            if r is not None:
                r["epoch"] = int(r.get("epoch") or "")
                rows.append(r)
        except (csv.Error, ValueError, TypeError):
            continue
    return rows


def truncate_metrics(path: str, last_epoch: int) -> int:
    """Rewrite metrics.csv with its readable rows of epochs 1..last_epoch (one per epoch, the last one seen),
    in the current columns; a resumed run appends the rest. Returns how many lines were dropped."""
    if not os.path.exists(path):
        return 0
    try:
        with open_regular(path, errors="replace") as f:
            lines = max(sum(1 for _ in f) - 1, 0)
    except OSError:
        lines = 0
    keep = {}
    for r in read_metrics(path):
        if 1 <= r["epoch"] <= last_epoch:
            keep[r["epoch"]] = r
    rows = [keep[e] for e in sorted(keep)]

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    atomic_write(path, write)
    return lines - len(rows)
