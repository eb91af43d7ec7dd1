"""What ``python -m fasttx bench`` writes: terminal and Markdown tables, JSON, CSV, PNG plots, and
the comparison with an earlier run's JSON."""

import csv
import glob
import json
import math
import os

from .common import kind

# Row fields that are measurements; every other field identifies the row (op, label, dtype,
# provider, pass) and is what --compare matches an earlier run's rows on.
MEASURED = ("ms", "ms p20", "ms p80", "host ms", "rate", "unit", "% of peak", "speed-up", "vs", "peak MB",
            "max rel err", "correct", "error", "old ms", "new/old", "regression")
NOT_LABEL = ("op", "dtype", "provider", "pass")
PLOTTED_PASSES = ("fwd", "fwd+bwd")


def row_key(row):
    return tuple((k, v) for k, v in row.items() if k not in MEASURED)


def label_keys(rows):
    """The keys that tell an op's cases apart (shape, mask kind, ...)."""
    return [k for k in rows[0] if k not in MEASURED and k not in NOT_LABEL]


def _fmt(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def verdict(row):
    if row["correct"] is None:
        return f"skip ({row.get('error', '')})"
    if row["correct"] and row["max rel err"] is None:
        return "ran"  # an unchecked case (common.Case.checked): finite, not compared
    return "ok" if row["correct"] else "FAIL"


def display(rows):
    """``rows`` as table cells: one dict (column -> text) per row."""
    labels = label_keys(rows)
    cells = []
    for r in rows:
        cell = {k: _fmt(r[k]) for k in labels}
        cell.update({
            "provider": r["provider"], "pass": r["pass"], "ms": _fmt(r["ms"]),
            "p20-p80": f"{_fmt(r['ms p20'], 3)}-{_fmt(r['ms p80'], 3)}" if r["ms"] else "-",
            **({"host ms": _fmt(r["host ms"], 3)} if "host ms" in r else {}),
            r["unit"]: _fmt(r["rate"]), "% peak": _fmt(r["% of peak"], 3), "speed-up": _fmt(r["speed-up"], 3),
            "vs": _fmt(r["vs"]), "peak MB": _fmt(r["peak MB"]), "max rel err": _fmt(r["max rel err"], 2),
            "check": verdict(r),
        })
        if "new/old" in r:
            cell["new/old"] = _fmt(r["new/old"], 3) + (" REGRESSION" if r["regression"] else "")
        cells.append(cell)
    return cells


def format_table(cells):
    """A fixed-width text table of ``cells`` (dicts with the same keys)."""
    columns = list(cells[0])
    widths = [max(len(c), *(len(r[c]) for r in cells)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(r[c].rjust(w) for c, w in zip(columns, widths)) for r in cells]
    return "\n".join(lines)


def markdown_table(cells):
    columns = list(cells[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r[c] for c in columns) + " |" for r in cells]
    return "\n".join(lines)


def headline(rows):
    """Per case and pass: the fastest correct fasttx provider against the fastest correct PyTorch
    baseline (and the fastest other library, when one ran)."""
    labels = label_keys(rows)
    groups = {}
    for r in rows:
        if r["correct"] and r["ms"]:
            groups.setdefault(tuple(r[k] for k in labels) + (r["pass"],), []).append(r)
    cells = []
    for key, group in groups.items():
        best = {}
        for r in group:
            k = kind(r["provider"])
            if k not in best or r["ms"] < best[k]["ms"]:
                best[k] = r
        if "fasttx" not in best or "pytorch" not in best:
            continue
        cell = {k: _fmt(v) for k, v in zip(labels + ["pass"], key)}
        cell.update({"best PyTorch": best["pytorch"]["provider"], "PyTorch ms": _fmt(best["pytorch"]["ms"]),
                     "best fasttx": best["fasttx"]["provider"], "fasttx ms": _fmt(best["fasttx"]["ms"]),
                     "speed-up": _fmt(best["pytorch"]["ms"] / best["fasttx"]["ms"], 3)})
        if any(kind(r["provider"]) == "other" for r in rows):
            other = best.get("other")
            cell["best other"] = f"{other['provider']} {_fmt(other['ms'])} ms" if other else "-"
        cells.append(cell)
    return cells


def describe(label):
    """A case's label as text: "rows=64 hidden=1024"."""
    return " ".join(f"{k}={v}" for k, v in label.items())


def write_data(rows, base, meta):
    """Write ``rows`` as base.json (with ``meta``) and base.csv; return the paths."""
    json_path, csv_path = base + ".json", base + ".csv"
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2, default=str)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def markdown_header(meta):
    versions = ", ".join(f"{k} {meta.get(k)}" for k in ("python", "torch", "triton", "cuda (torch build)"))
    return (f"# fasttx bench\n\n`{meta['command']}` on {meta['device']}, {meta['date']}; {versions}; "
            f"fasttx backends timed: {', '.join(meta['backends'])}; measured peaks: "
            + ", ".join(f"{_fmt(v)} {k}" for k, v in meta["measured_peaks"].items()) + "\n\n")


def markdown_section(op, rows, meta, comparison=None):
    """One op's Markdown: headline, then every row; ``comparison``: compare()'s summary."""
    peak = meta["measured_peaks"].get(rows[0]["unit"])
    lines = [f"## {op} ({rows[0]['dtype']}, {meta['device']})", "",
             f"Measured peak: {_fmt(peak)} {rows[0]['unit']}. Speed-up: the fastest correct PyTorch "
             "baseline's time / this time, same run. ms: median; p20-p80: its spread."
             + (" host ms: the median time the host took to issue the call (Python and launches, not "
                "synchronized); where it nears or passes ms, the GPU waited on the host and ms is the "
                "host's time, not the kernels'." if "host ms" in rows[0] else ""), ""]
    if meta.get("cut"):
        lines += [f"Cut by --time-limit {meta['time_limit_s']:g} s (not run or not finished): "
                  + "; ".join(meta["cut"]) + ".", ""]
    best = headline(rows)
    if best:
        lines += ["Best fasttx vs best PyTorch:", "", markdown_table(best), ""]
    if comparison:
        lines += [comparison, ""]
    lines += ["All rows:", "", markdown_table(display(rows)), ""]
    return "\n".join(lines)


def load_old(path):
    """(rows by row_key, the devices they were measured on) of an earlier run: ``path`` is a JSON
    file bench wrote or a folder of them."""
    paths = sorted(glob.glob(os.path.join(path, "*.json"))) if os.path.isdir(path) else [path]
    if not paths:
        raise ValueError(f"--compare: no JSON files in the folder {path!r}")
    old, devices = {}, set()
    for p in paths:
        try:
            with open(p) as f:
                report = json.load(f)
            old.update((row_key(r), r) for r in report["rows"])
            devices.add(report["meta"].get("device"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"--compare: {p!r} is not a JSON report written by fasttx bench ({e})") from e
    return old, devices


def compare(rows, old, threshold):
    """Add "old ms", "new/old" and "regression" (new/old > 1 + threshold) to each row that has a
    match in ``old``; return a one-line summary, or None when nothing matched."""
    ratios, regressions = [], 0
    for r in rows:
        before = old.get(row_key(r))
        if before is None or not (r["ms"] and before.get("ms") and r["correct"] and before.get("correct")):
            continue
        r["old ms"], r["new/old"] = before["ms"], r["ms"] / before["ms"]
        r["regression"] = r["new/old"] > 1 + threshold
        ratios.append(r["new/old"])
        regressions += r["regression"]
    if not ratios:
        return None
    geomean = 2 ** (sum(math.log2(x) for x in ratios) / len(ratios))
    return (f"Against the earlier run: {len(ratios)} matching rows, geometric mean new/old time "
            f"{geomean:.3f}, {regressions} regression(s) slower by more than {threshold:.0%}.")


def can_plot():
    """Whether matplotlib, an optional dependency, is installed."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def plot(rows, spec, path):
    """Rate (GB/s or TFLOP/s) against spec's x key, one line per implementation, one panel per
    group of cases sharing spec's other keys, forward and forward+backward (needs matplotlib).
    Returns ``path``, or None when no correct row was timed."""
    from matplotlib.figure import Figure

    x_key, group_keys = spec
    ok = [r for r in rows if r["correct"] and r["rate"] and r["pass"] in PLOTTED_PASSES]
    groups = list(dict.fromkeys(tuple(r[k] for k in group_keys) for r in ok))
    if not groups:
        return None
    fig = Figure(figsize=(12, 3.6 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), len(PLOTTED_PASSES), squeeze=False)
    for group, panel_row in zip(groups, axes):
        for direction, ax in zip(PLOTTED_PASSES, panel_row):
            mine = [r for r in ok if r["pass"] == direction and tuple(r[k] for k in group_keys) == group]
            for provider in dict.fromkeys(r["provider"] for r in mine):
                points = sorted((r[x_key], r["rate"]) for r in mine if r["provider"] == provider)
                style = "-" if kind(provider) == "fasttx" else "--"
                ax.plot(*zip(*points), style, marker="o", label=provider)
            ax.set_xscale("log", base=2)
            ax.set_xlabel(x_key)
            ax.set_ylabel(ok[0]["unit"])
            ax.set_title(", ".join(f"{k}={v}" for k, v in zip(group_keys, group)) + f" - {direction}", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"{ok[0]['op']} ({ok[0]['dtype']})")
    fig.savefig(path, dpi=90)
    return path
