"""The GPU targets of issue 13 that ``make gpu-check``'s summary compares against, evaluated on the
rows of `python -m fasttx bench` and the summary of `python -m fasttx profile` from the same run
(H200, bf16; every ratio is against a baseline measured in that run):

- norms and softmax, hidden (columns) >= 4096: forward >= 90% of the copy bandwidth the bench
  measured in its run;
  forward+backward >= 1.5x torch eager; backward never slower than eager;
- Triton attention, head dim 128, seq >= 4096, no mask (causal or not): forward >= 1.2x and
  forward+backward >= 1.1x torch's flash SDPA backend; with dropout (0.1) forward+backward no more
  than 15% slower than the same case without (time ratio >= 1 / 1.15 = 0.87);
- MHA module (d_model 1024, 16 heads, seq 2048, batch 8) forward+backward >= 1.3x nn.MultiheadAttention;
- GPT training step (d_model 1024, 16 layers, seq 2048) >= 1.25x torch eager tokens/s, peak memory
  <= 1.0x torch's.

Each target is reported per fasttx backend as its worst case over the qualifying shapes: the value,
the target, ratio = value / target (>= 1 meets it; for peak memory target / value), and "pass",
"fail" or "no data" (no qualifying row: a shape not run, or a wrong or failed result).
"""

BACKENDS = ("triton", "cuda")


def _rows(rows, op, provider, direction, label=None):
    return [r for r in rows if r["op"] == op and r["provider"] == provider and r["pass"] == direction
            and all(r.get(k) == v for k, v in (label or {}).items())]


def _speedups(rows, op, backend, direction, baseline, qualifies):
    """[(speed-up of fasttx ``backend`` over ``baseline``, shape text)] on the qualifying shapes."""
    found = []
    for mine in _rows(rows, op, f"fasttx {backend}", direction):
        if not qualifies(mine) or not mine["correct"] or not mine["ms"]:
            continue
        label = {k: mine[k] for k in mine if k in _LABEL_KEYS}
        theirs = [r for r in _rows(rows, op, baseline, direction, label) if r["correct"] and r["ms"]]
        if theirs:
            found.append((theirs[0]["ms"] / mine["ms"], _describe(label)))
    return found


_LABEL_KEYS = ("rows", "hidden", "cols", "mask", "batch", "seq", "heads", "head_dim", "causal", "dropout",
               "d_model", "attention", "need_weights")


def _dropout_ratios(rows, backend, qualifies):
    """[(time without dropout / time with it, shape text)]: fasttx ``backend``'s attention forward+backward
    with dropout against its own run of the same case without (same label but dropout 0)."""
    found = []
    for mine in _rows(rows, "attention", f"fasttx {backend}", "fwd+bwd"):
        if not mine.get("dropout") or not qualifies(mine) or not mine["correct"] or not mine["ms"]:
            continue
        label = {k: mine[k] for k in mine if k in _LABEL_KEYS and k != "dropout"}
        plain = [r for r in _rows(rows, "attention", mine["provider"], "fwd+bwd", dict(label, dropout=0.0))
                 if r["correct"] and r["ms"]]
        if plain:
            found.append((plain[0]["ms"] / mine["ms"], _describe(dict(label, dropout=mine["dropout"]))))
    return found


def _describe(label):
    return " ".join(f"{k}={v}" for k, v in label.items())


def _target(check, backend, values, target, unit="x", higher_is_better=True):
    """One target entry from [(value, shape)]: the worst value decides."""
    if not values:
        return {"check": check, "backend": backend, "figure": None, "target": target, "ratio": None,
                "status": "no data", "where": None, "unit": unit}
    value, where = min(values) if higher_is_better else max(values)
    ratio = value / target if higher_is_better else target / value
    return {"check": check, "backend": backend, "figure": round(value, 3), "target": target, "ratio": round(ratio, 3),
            "status": "pass" if ratio >= 1 else "fail", "where": where, "unit": unit}


def evaluate(rows, profile):
    """The list of target entries (see the module docstring) for bench ``rows`` and the profile summary."""
    targets = []
    for op, size in (("layer_norm", "hidden"), ("rms_norm", "hidden"), ("softmax", "cols")):
        def wide(r, size=size):
            return r.get(size, 0) >= 4096
        for backend in BACKENDS:
            fractions = [(r["% of peak"] / 100, _describe({size: r[size], "rows": r["rows"]}))
                         for r in _rows(rows, op, f"fasttx {backend}", "fwd")
                         if wide(r) and r["correct"] and r["% of peak"] is not None]
            targets.append(_target(f"{op} fwd, share of copy bandwidth", backend, fractions, 0.9, "of peak"))
            targets.append(_target(f"{op} fwd+bwd vs torch eager", backend,
                                   _speedups(rows, op, backend, "fwd+bwd", "torch eager", wide), 1.5))
            targets.append(_target(f"{op} bwd vs torch eager", backend,
                                   _speedups(rows, op, backend, "bwd", "torch eager", wide), 1.0))
    for backend in BACKENDS:
        def long_128(r):
            return r.get("head_dim") == 128 and r.get("seq", 0) >= 4096 and r.get("mask", "none") == "none"

        def plain_long_128(r):
            return long_128(r) and not r.get("dropout")
        for direction, goal in (("fwd", 1.2), ("fwd+bwd", 1.1)):
            targets.append(_target(f"attention {direction} vs torch sdpa flash (E=128, seq>=4096)", backend,
                                   _speedups(rows, "attention", backend, direction, "torch sdpa flash", plain_long_128),
                                   goal))
        targets.append(_target("attention fwd+bwd with dropout vs without (E=128, seq>=4096)", backend,
                               _dropout_ratios(rows, backend, long_128), round(1 / 1.15, 3)))

        def mha_target(r):
            return (r.get("seq"), r.get("d_model"), r.get("heads"), r.get("batch"), r.get("attention"),
                    r.get("need_weights")) == (2048, 1024, 16, 8, "self", False)
        targets.append(_target("MHA module fwd+bwd vs nn.MultiheadAttention (1024, 16 heads, seq 2048, batch 8)",
                               backend, _speedups(rows, "mha", backend, "fwd+bwd", "torch.nn", mha_target), 1.3))
    gpt = profile and profile.get("variants", {})
    config = (profile or {}).get("config", {})
    is_target = (config.get("d_model"), config.get("layers"), config.get("seq")) == (1024, 16, 2048)
    where = f"batch {config.get('batch')}, {config.get('dtype')}, backend {config.get('backend')}" if gpt else None
    speed = [(gpt["fasttx"]["tokens_per_s"] / gpt["torch"]["tokens_per_s"], where)] if gpt and is_target else []
    targets.append(_target("GPT step tokens/s vs torch eager (1024, 16 layers, seq 2048)", "auto", speed, 1.25))
    memory = [(gpt["fasttx"]["peak_memory_mb"] / gpt["torch"]["peak_memory_mb"], where)] \
        if gpt and is_target and gpt["torch"].get("peak_memory_mb") else []
    targets.append(_target("GPT step peak memory vs torch eager", "auto", memory, 1.0, higher_is_better=False))
    return targets


def plot(rows, targets, path):
    """Bar chart of every fasttx row's speed-up over the fastest correct PyTorch baseline, fwd and
    fwd+bwd, one bar group per op and shape; False when matplotlib is missing or nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    mine = [r for r in rows if r["provider"].startswith("fasttx ") and r["pass"] in ("fwd", "fwd+bwd")
            and r["speed-up"]]
    if not mine:
        return False
    def varying(op):  # the label keys that tell this op's bars apart
        values = [{k: r[k] for k in r if k in _LABEL_KEYS} for r in mine if r["op"] == op]
        return [k for k in values[0] if len({str(v.get(k)) for v in values}) > 1]

    shown = {op: varying(op) for op in {r["op"] for r in mine}}
    labels = sorted({(r["op"], _describe({k: r[k] for k in shown[r["op"]]})) for r in mine})
    series = sorted({(r["provider"], r["pass"]) for r in mine})
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(labels) * len(series) / 2), 6))
    width = 0.8 / len(series)
    for i, (provider, direction) in enumerate(series):
        heights = []
        for op, text in labels:
            match = [r["speed-up"] for r in mine if r["op"] == op and r["provider"] == provider
                     and r["pass"] == direction and _describe({k: r[k] for k in shown[op]}) == text]
            heights.append(match[0] if match else 0)
        ax.bar([j + i * width for j in range(len(labels))], heights, width, label=f"{provider} {direction}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels([f"{op}\n{text}" for op, text in labels], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("speed-up vs fastest correct PyTorch baseline")
    met = sum(t["status"] == "pass" for t in targets)
    judged = sum(t["status"] != "no data" for t in targets)
    ax.set_title(f"fasttx gpu-check headline: {met} of {judged} targets with data met ({len(targets)} in all)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
