"""The ptxas register / shared-memory / spill tables of the CUDA kernels, generated, not pasted.

Compiles every csrc/**/*.cu for each architecture the extension is built for, with the nvcc flags
setup.py gives torch's CUDAExtension (fasttx/_build.py) plus ``-Xptxas -v``, parses what ptxas
reports for every kernel instantiation, and writes one table per kernel family (a directory of csrc/)
into the README section between ``<!-- ptxas-table FAMILY -->`` and ``<!-- /ptxas-table -->``:

    python tools/ptxas_table.py            # print the tables
    python tools/ptxas_table.py --write    # rewrite the README sections
    python tools/ptxas_table.py --check    # exit 1 when a README section differs from a fresh compile

A full compile: minutes (``--jobs`` parallel nvcc processes).
"""

import argparse
import concurrent.futures
import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_build_config():
    """This checkout's fasttx/_build.py (the extension's flags and architectures), by path as setup.py loads it."""
    spec = importlib.util.spec_from_file_location("fasttx_build", os.path.join(ROOT, "fasttx", "_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build = _load_build_config()
ARCHS = tuple("sm_" + arch.replace(".", "") for arch in _build.DEFAULT_ARCH_LIST.split(";"))  # sm_80, sm_90a
# torch adds the C++ standard its headers need (C++20 for every torch fasttx supports, >= 2.11).
CXX_STD = "-std=c++20"
BEGIN = re.compile(r"<!-- ptxas-table (\w+) -->\n")
END = "<!-- /ptxas-table -->"


@dataclasses.dataclass(frozen=True)
class Kernel:
    """What ptxas -v reports for one kernel instantiation on one architecture."""

    name: str  # mangled
    arch: str  # "sm_80"
    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    smem: int  # static shared memory, bytes


_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> list[Kernel]:
    """The entry functions in ptxas -v output. Its blocks read, per entry function:
    "Compiling entry function 'NAME' for 'ARCH'", "Function properties for NAME", the stack /
    spill line, "Used N registers, ..., S bytes smem, ..." (smem only when there is some).
    Function properties of non-entry functions (not inlined device functions) are skipped."""
    kernels = []
    entry = arch = props_of = None
    spills = (0, 0)
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            entry, arch, props_of, spills = m[1], m[2], None, (0, 0)
        elif m := _PROPERTIES.search(line):
            props_of = m[1]
        elif (m := _SPILLS.search(line)) and props_of is not None and props_of == entry:
            spills = (int(m[2]), int(m[3]))
        elif (m := _USED.search(line)) and entry is not None:
            smem = _SMEM.search(line)
            kernels.append(Kernel(entry, arch, int(m[1]), *spills, int(smem[1]) if smem else 0))
            entry = None
    return kernels


def demangle(names: Iterable[str]) -> dict[str, str]:
    """Mangled name -> demangled, through c++filt (binutils, beside every host compiler nvcc uses)."""
    names = sorted(set(names))
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None:
        sys.exit("ptxas_table: neither cu++filt nor c++filt is on PATH to demangle the kernel names")
    out = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines(), strict=True))


def split_signature(demangled: str) -> tuple[str, list[str]]:
    """"void ns::kern<__half, 64, true>(ns::P)" -> ("kern", ["__half", "64", "true"])."""
    qualified = demangled.removeprefix("void ").replace("(anonymous namespace)", "")
    cut = min(i for i in (qualified.find("<"), qualified.find("("), len(qualified)) if i >= 0)
    args, depth, current = [], 0, ""
    for ch in qualified[cut + 1:] if qualified[cut:cut + 1] == "<" else "":
        if depth == 0 and ch in ",>":
            args.append(current.strip())
            current = ""
            if ch == ">":
                break
            continue
        depth += (ch == "<") - (ch == ">")
        current += ch
    return qualified[:cut].split("::")[-1], args


@dataclasses.dataclass(frozen=True)
class Family:
    """How one kernel family's instantiations are grouped: a row per label that `row` gives a
    (kernel name, template args) pair, a column per architecture or per value of one template arg."""

    intro: str  # what varies inside a cell
    row: Callable[[str, list[str]], str]
    rows: tuple[str, ...]  # the row labels, in table order
    column: tuple[int, str] | None = None  # (template arg index, its name) giving the columns; None: one per arch
    # Row labels whose instances run on one architecture only (elsewhere a stub, left out).
    only_on: dict[str, str] = dataclasses.field(default_factory=dict)


def _by_kernel(labels: dict[str, str]) -> dict:
    """Family's row and rows for a row per kernel: labels maps kernel names to row labels, in order."""
    return {"row": lambda name, args: labels[name], "rows": tuple(labels.values())}


_SOFTMAX_MASK = {"void": "no mask", "unsigned char": "bool mask"}

_NORM_ROWS = {
    "norm_fwd_kernel": "forward",
    "norm_bwd_kernel": "backward: dx, dw, db partial sums",
    "norm_bwd_long_rows_kernel": "backward: dx; dw, db partial sums where they fit shared memory (longer rows, not split)",
    "norm_bwd_param_kernel": "backward: dw, db partial sums (longer rows, not split, past shared memory)",
    "reduce_partials_kernel": "backward: dw, db from the partial sums",
}
# The kernels whose last template argument, kSplit, makes instances for rows of 2-16 chunks split over a
# thread block cluster: a row of their own in the table.
_NORM_SPLIT_KERNELS = ("norm_fwd_kernel", "norm_bwd_kernel")
_NORM_SPLIT_LABELS = tuple(_NORM_ROWS[name] for name in _NORM_SPLIT_KERNELS)
_NORM_SPLIT = ", rows split over a cluster"

FAMILIES = {
    "attention": Family(
        intro="both dtypes, causal or not, sm_80 and sm_90a, at E = 256 the dV and the dK launches; 255 is "
              "the limit at 128 threads; the sm_90a forward, dK/dV and dQ kernels: sm_90a only, 384 threads, "
              "168 at launch, then setmaxnreg gives their consumers 240 (the forward at E = 64 without mask "
              "or dropout: 512 threads, 128 at launch, three consumers of 160; dQ at E = 256: 256 threads, "
              "one consumer, 255 at launch, then 256)",
        **_by_kernel({
            "attention_fwd_kernel": "forward",
            "attention_bwd_kv_kernel": "dK/dV",
            "attention_bwd_q_kernel": "dQ",
            "attention_bwd_delta_kernel": "D = rowsum(dO O)",
            "attention_fwd_sm90_kernel": "forward, sm_90a (FlashAttention-3 scheme)",
            "attention_bwd_kv_sm90_kernel": "dK/dV, sm_90a (FlashAttention-3 scheme)",
            "attention_bwd_q_sm90_kernel": "dQ, sm_90a (FlashAttention-3 scheme)",
        }),
        column=(1, "E"),
        only_on={row: "sm_90a" for row in ("forward, sm_90a (FlashAttention-3 scheme)",
                                           "dK/dV, sm_90a (FlashAttention-3 scheme)",
                                           "dQ, sm_90a (FlashAttention-3 scheme)")},
    ),
    "layer_norm": Family(
        intro="LayerNorm and RMSNorm, the three activation dtypes, 16-bit or fp32 parameters, "
              "vector-aligned or not; the instances for rows split over a cluster, vector-aligned, on "
              "sm_90a only: before sm_90 they are a trap",
        row=lambda name, args: _NORM_ROWS[name] + (_NORM_SPLIT if name in _NORM_SPLIT_KERNELS and args[-1] == "true"
                                                    else ""),
        rows=tuple(label + suffix for label in _NORM_ROWS.values()
                   for suffix in ("", _NORM_SPLIT) if not suffix or label in _NORM_SPLIT_LABELS),
        only_on={label + _NORM_SPLIT: "sm_90a" for label in _NORM_SPLIT_LABELS},
    ),
    "softmax": Family(
        intro="the three input dtypes, 16-bit or fp32 output / gradient, vector-aligned or not",
        row=lambda name, args: (
            f"forward, {_SOFTMAX_MASK.get(args[2], 'float mask')}" if name == "softmax_fwd_kernel" else "backward"
        ),
        rows=("forward, no mask", "forward, bool mask", "forward, float mask", "backward"),
    ),
}


def _span(values: Iterable[int]) -> str:
    values = list(values)
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _cell(kernels: list[Kernel], spills_per_arch: bool) -> str:
    """Registers (range), static shared memory where any, spill stores / loads where any."""
    if not kernels:
        return "-"
    text = _span(k.registers for k in kernels)
    if any(k.smem for k in kernels):
        text += f", smem {_span(k.smem for k in kernels)} B"
    spills = []
    for arch in sorted({k.arch for k in kernels}):
        mine = [k for k in kernels if k.arch == arch]
        spilling = [k for k in mine if k.spill_stores or k.spill_loads]
        if spilling:
            where = f" ({arch})" if spills_per_arch else ""
            spills.append(f"{_span(k.spill_stores for k in spilling)}/{_span(k.spill_loads for k in spilling)} B "
                          f"in {len(spilling)} of {len(mine)}{where}")
    if spills:
        text += "; spills " + ", ".join(spills)
    return text


def render(family: Family, kernels: list[Kernel], names: dict[str, str]) -> str:
    """The Markdown table of one family: kernels with their demangled names in `names`."""
    cells: dict[tuple[str, str], list[Kernel]] = {}
    columns = set()
    for k in kernels:
        base, args = split_signature(names[k.name])
        row = family.row(base, args)
        if family.only_on.get(row, k.arch) != k.arch:
            continue
        column = k.arch if family.column is None else args[family.column[0]]
        columns.add(column)
        cells.setdefault((row, column), []).append(k)
    unknown = {row for row, _ in cells} - set(family.rows)
    assert not unknown, f"rows without a place in the table: {sorted(unknown)}"
    if family.column is None:
        ordered = titles = list(ARCHS)
    else:
        ordered = sorted(columns, key=lambda c: (len(c), c))  # numbers in order
        titles = [f"{family.column[1]} = {ordered[0]}", *ordered[1:]]
    lines = ["| kernel | " + " | ".join(titles) + " |", "| --- |" + " --- |" * len(ordered)]
    for row in family.rows:
        lines.append(f"| {row} | " + " | ".join(_cell(cells.get((row, c), []), family.column is not None) for c in ordered) + " |")
    return "\n".join(lines) + "\n"


def section(family_name: str, kernels: list[Kernel], names: dict[str, str], nvcc_release: str) -> str:
    family = FAMILIES[family_name]
    intro = (
        f"Generated by `python tools/ptxas_table.py --write` (ptxas -v, CUDA {nvcc_release}, the flags of "
        f"setup.py): registers per thread over every instantiation ({family.intro}); static shared "
        "memory where any; spill stores / loads in bytes and how many instantiations spill, where any."
    )
    wrapped = textwrap.fill(intro, width=100, break_long_words=False, break_on_hyphens=False)
    return wrapped + "\n\n" + render(family, kernels, names)


def nvcc_command(source: str, arch: str, output: str) -> list[str]:
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    virtual = arch.replace("sm_", "compute_")
    return ["nvcc", "-cubin", f"-gencode=arch={virtual},code={arch}", *COMMON_NVCC_FLAGS, *_build.NVCC_FLAGS,
            CXX_STD, "-I", os.path.join(ROOT, "csrc"), "-Xptxas", "-v", source, "-o", output]


def compile_all(jobs: int) -> dict[str, list[Kernel]]:
    """Family -> the kernels of every csrc/FAMILY/*.cu (the build's, every head dim) on every architecture."""
    sources = [os.path.join(ROOT, source) for source in _build.extension_build(ROOT, {})[0] if source.endswith(".cu")]
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        def run(source, arch):
            out = os.path.join(tmp, f"{os.path.relpath(source, ROOT).replace(os.sep, '_')}.{arch}.cubin")
            proc = subprocess.run(nvcc_command(source, arch, out), capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"ptxas_table: nvcc failed on {source} for {arch}:\n{proc.stderr}")
            return source, parse_ptxas(proc.stderr + proc.stdout)

        futures = [pool.submit(run, s, a) for s in sources for a in ARCHS]
        by_family: dict[str, list[Kernel]] = {}
        for future in futures:
            source, kernels = future.result()
            family = os.path.relpath(source, os.path.join(ROOT, "csrc")).split(os.sep)[0]
            by_family.setdefault(family, []).extend(kernels)
    missing = set(FAMILIES) - set(by_family)
    assert not missing, f"no kernels compiled for {sorted(missing)}"
    return by_family


def nvcc_release() -> str:
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, check=True).stdout
    return re.search(r"release (\d+\.\d+)", out)[1]


def readmes() -> list[str]:
    csrc = os.path.join(ROOT, "csrc")
    return [os.path.join(csrc, "README.md")] + sorted(
        os.path.join(csrc, d, "README.md") for d in os.listdir(csrc) if os.path.isfile(os.path.join(csrc, d, "README.md"))
    )


def replace_sections(text: str, sections: dict[str, str]) -> tuple[str, set[str]]:
    """text with every marked section rewritten, and the families it marks."""
    out, pos, seen = [], 0, set()
    for m in BEGIN.finditer(text):
        family = m[1]
        if family not in sections:
            raise SystemExit(f"ptxas_table: a README marks an unknown kernel family {family!r}")
        end = text.find(END, m.end())
        if end < 0:
            raise SystemExit(f"ptxas_table: the section of {family!r} has no {END}")
        out += [text[pos:m.end()], sections[family]]
        pos = end
        seen.add(family)
    out.append(text[pos:])
    return "".join(out), seen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the README sections")
    mode.add_argument("--check", action="store_true", help="exit 1 when a README section is stale")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)),
                        help="parallel nvcc processes (default: $MAX_JOBS, else the CPU count)")
    args = parser.parse_args(argv)

    by_family = compile_all(args.jobs)
    names = demangle(k.name for kernels in by_family.values() for k in kernels)
    release = nvcc_release()
    sections = {f: section(f, by_family[f], names, release) for f in FAMILIES}
    if not (args.write or args.check):
        for family, text in sections.items():
            print(f"## {family}\n\n{text}")
        return 0
    stale, marked = [], set()
    for path in readmes():
        if not os.path.isfile(path):
            continue
        text = open(path).read()
        new, seen = replace_sections(text, sections)
        marked |= seen
        if new != text:
            stale.append(os.path.relpath(path, ROOT))
            if args.write:
                open(path, "w").write(new)
    if marked != set(FAMILIES):
        raise SystemExit(f"ptxas_table: no README section for {sorted(set(FAMILIES) - marked)}")
    if args.check and stale:
        print(f"stale ptxas tables in {', '.join(stale)}: run python tools/ptxas_table.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
