"""``make gpu-check`` stage "autotune": run every Triton autotune config of every kernel once and check
each against the float64 reference.

The autotuner times the configs a call admits and keeps the fastest, so on a GPU any of them may
run; each must be right. The kernels are found, not listed: every ``triton.autotune`` object in the
modules of fasttx.triton_kernels. Each op case (gpu_cases.py) runs through the Triton backend with the
autotuners' ``run`` replaced: a call computes the configs its own pruning admits (early_config_prune)
and launches one of them directly, bypassing the timing. The first run of a case uses the first
admitted config of every kernel it reaches; then each other admitted config of each kernel is forced
in a run of its own (the other kernels keep their first). A config that no case forces, or a kernel
that no case reaches, is reported as not covered: the stage fails, so a new autotuned kernel needs a
case here before it can pass. Under the Triton interpreter each autotuner has one config, so the CPU
run checks that plumbing and the reach of the cases.

    python -m fasttx.cli.gpu_autotune [--shard I/N] [--out FILE.json]

Shards split the cases between processes (compiling is per process and single-threaded);
``summarize`` merges their JSON.
"""

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time

import torch

from . import gpu_cases


def autotuners():
    """{"module.name": Autotuner} of every autotuned kernel in fasttx.triton_kernels, each once."""
    from triton.runtime.autotuner import Autotuner

    from .. import triton_kernels

    found = {}
    for info in sorted(pkgutil.iter_modules(triton_kernels.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{triton_kernels.__name__}.{info.name}")
        for attr, value in vars(module).items():
            if isinstance(value, Autotuner):
                home = getattr(getattr(value, "base_fn", None), "__module__", module.__name__)
                # Re-exported under several names: keep the name in the module that defines it.
                if id(value) not in found or module.__name__ == home:
                    found[id(value)] = (f"{info.name}.{attr}", value)
    return dict(found.values())


def config_key(config):
    """A config's launch parameters as text, e.g. "BLOCK_M=128,BLOCK_N=64,warps=4,stages=3"."""
    parts = [f"{k}={v}" for k, v in sorted(config.kwargs.items())]
    parts += [f"warps={config.num_warps}", f"stages={config.num_stages}"]
    parts += [f"{k}={getattr(config, k)}" for k, default in (("num_ctas", 1), ("maxnreg", None))
              if getattr(config, k, default) != default]
    return ",".join(parts)


class Forcer:
    """Replaces each autotuner's ``run`` (an instance attribute shadowing the method) while active: a
    launch records the configs its pruning admits and runs ``target``'s config for the target
    kernel, the first admitted one for the others."""

    def __init__(self, tuners):
        self.tuners = tuners
        self.target = None  # (name, config) or None
        self.admitted, self.used = {}, {}

    def __enter__(self):
        for name, tuner in self.tuners.items():
            tuner.run = lambda *args, _name=name, _tuner=tuner, **kwargs: self._run(_name, _tuner, *args, **kwargs)
        return self

    def __exit__(self, *exc):
        for tuner in self.tuners.values():
            vars(tuner).pop("run", None)

    def reset(self, target=None):
        self.target, self.admitted, self.used = target, {}, {}

    def _run(self, name, tuner, *args, **kwargs):
        named = dict(zip(tuner.arg_names, args))
        prune = getattr(tuner, "early_config_prune", None)
        admitted = list(prune(tuner.configs, named, **kwargs) if prune else tuner.configs)
        seen = self.admitted.setdefault(name, [])
        seen += [c for c in admitted if c not in seen]
        config = self.target[1] if self.target and self.target[0] == name and self.target[1] in admitted \
            else admitted[0]
        self.used.setdefault(name, set()).add(config_key(config))
        if config.pre_hook is not None:
            config.pre_hook({**named, **kwargs, **config.all_kwargs()})
        return tuner.fn.run(*args, **kwargs, **config.all_kwargs())


def cases(device_type):
    """The op cases run through the Triton backend: attention in each head-dim class of the configs
    (64, 128, 256) and dtype class (fp32, 16-bit), causal and with a float mask (the largest tiles'
    shared memory), a bool mask with grouped heads, and the opt-in backward (deterministic=False, its
    own autotuned kernel) in each class; one case per norm and softmax, so that an autotuner added to
    them is reached. Under the interpreter: a few tiny ones."""
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    att = gpu_cases.attention_case
    if device_type != "cuda":
        return [att(1, 2, 20, 20, 16, fp32, is_causal=True), att(1, 2, 17, 23, 16, fp16, mask="float"),
                att(1, 2, 19, 21, 16, fp32, mask="bool", deterministic=False),
                gpu_cases.norm_case("layer_norm", 3, 40, fp32), gpu_cases.norm_case("rms_norm", 3, 40, fp16),
                gpu_cases.softmax_case(3, 40, fp32, mask="bool", is_causal=True)]
    return ([att(2, 3, 300, 300, dim, dtype, is_causal=True) for dtype in (bf16, fp32) for dim in (64, 128, 256)]
            + [att(2, 3, 200, 333, dim, dtype, mask="float") for dtype in (bf16, fp32) for dim in (64, 128, 256)]
            + [att(2, 4, 257, 190, 128, fp16, mask="bool", kv_heads=2), att(1, 2, 129, 129, 96, bf16, is_causal=True)]
            + [att(2, 3, 300, 300, dim, dtype, is_causal=True, deterministic=False)
               for dtype in (bf16, fp32) for dim in (64, 128, 256)]
            + [att(2, 3, 200, 333, 128, bf16, mask="float", deterministic=False)]
            + [gpu_cases.norm_case("layer_norm", 33, 4096, bf16), gpu_cases.norm_case("rms_norm", 33, 20000, bf16),
               gpu_cases.softmax_case(33, 5000, bf16, mask="bool", is_causal=True)])


def _attempt(case, run, expected):
    """(status, max rel err, message) of one run of ``case`` through the Triton backend."""
    from ..testing import TOLERANCE

    try:
        got = run("triton")
    except Exception as e:  # a config that fails to compile or launch is a failed config
        return "error", None, f"{type(e).__name__}: {e}"[:500]
    err = gpu_cases.max_error(got, expected) if case.checked else 0.0
    return ("pass" if err <= TOLERANCE[case.dtype] else "fail"), err, None


def run_cases(selected, device_type, after_case=lambda result: None):
    """Force every admitted config of every autotuner the ``selected`` cases reach; the results as a
    JSON-able dict: {"autotuners": {name: [config keys]}, "records": [...], "cases": [...]}, also
    passed to ``after_case`` after each case (so that a stopped run keeps what it did)."""
    tuners = autotuners()
    records, ran = [], []
    result = {"autotuners": {name: [config_key(c) for c in t.configs] for name, t in tuners.items()},
              "records": records, "cases": ran}

    def record(case, kernel, config, outcome):
        status, err, message = outcome
        records.append(dict(case=case.name, kernel=kernel, config=config, status=status, error=err, message=message))

    with Forcer(tuners) as forcer:
        for case in selected:
            begin = time.perf_counter()
            run, expected = gpu_cases.prepare(case, device_type)
            forcer.reset()
            outcome = _attempt(case, run, expected)
            first = dict(forcer.admitted)
            for name, keys in forcer.used.items():
                for key in keys:
                    record(case, name, key, outcome)
            if not forcer.used:  # reaches no autotuner (or failed before): the case itself is recorded
                record(case, None, None, outcome)
            for name, configs in first.items():
                for config in configs[1:]:
                    forcer.reset((name, config))
                    record(case, name, config_key(config), _attempt(case, run, expected))
            seconds = time.perf_counter() - begin
            ran.append(dict(case=case.name, seconds=seconds, reached=sorted(first)))
            print(f"{case.name}: {seconds:.1f} s, kernels reached: {sorted(first) or 'none'}", flush=True)
            after_case(result)
    return result


def summarize(results):
    """Merge shard results: per kernel and config "pass", "fail" or "not covered"; the stage passes
    when every config of every autotuner was forced at least once and none failed."""
    autotuners, records = {}, []
    for r in results:
        autotuners.update(r["autotuners"])
        records += r["records"]
    configs = {}
    for name, keys in autotuners.items():
        for key in keys:
            mine = [r for r in records if r["kernel"] == name and r["config"] == key]
            bad = [r for r in mine if r["status"] != "pass"]
            worst = max((r["error"] for r in mine if r["error"] is not None), default=None)
            configs[f"{name} [{key}]"] = {
                "status": "fail" if bad else "pass" if mine else "not covered", "runs": len(mine),
                "max rel err": worst, "failures": [f"{r['case']}: {r['message'] or r['error']}" for r in bad][:3]}
    case_errors = [r for r in records if r["kernel"] is None and r["status"] != "pass"]
    counts = {s: sum(c["status"] == s for c in configs.values()) for s in ("pass", "fail", "not covered")}
    ok = bool(configs) and counts["pass"] == len(configs) and not case_errors
    return {"status": "pass" if ok else "fail", "kernels": sorted(autotuners), "counts": counts,
            "configs": configs, "case failures": [f"{r['case']}: {r['message'] or r['error']}" for r in case_errors]}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fasttx.cli.gpu_autotune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard", default="0/1", help="I/N: run cases I, I+N, I+2N, ... (default 0/1)")
    parser.add_argument("--out", help="write the results as JSON here (default: print them)")
    args = parser.parse_args(argv)
    index, count = (int(n) for n in args.shard.split("/"))
    device_type = "cuda" if torch.cuda.is_available() else "cpu"

    def write(result):
        if args.out:
            with open(args.out + ".tmp", "w") as f:
                json.dump(result, f, indent=1)
            os.replace(args.out + ".tmp", args.out)

    result = run_cases(cases(device_type)[index::count], device_type, write)
    if not args.out:
        print(json.dumps(result, indent=1))
    return 1 if any(r["status"] != "pass" for r in result["records"]) else 0


if __name__ == "__main__":
    sys.exit(main())
