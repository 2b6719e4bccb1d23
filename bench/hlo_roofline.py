"""A roofline of a compiled XLA program: every kernel's bytes moved and matmul FLOPs, from the
optimized HLO text (`jax.jit(f).lower(...).compile().as_text()`).

  python bench/hlo_roofline.py PROGRAM.hlo [--bandwidth-tb-s=3.35] [--peak-tflops=689]

Each kernel of the entry computation (a fusion, a library call, a copy) is timed at its bound:
max(bytes / memory bandwidth, matmul FLOPs / matmul peak). Loop bodies count once per
iteration: `known_trip_count` where XLA gives it, else `unknown_trips` (the bench's dynamic
log-prob loop runs one iteration per chunk holding a response token). The sum is a lower bound
of the step time that says where bytes go; a profile (bench/train_step.py --profile) says where
the time goes, and the two together say which kernels run far from their bound.

Bytes: each operand and result once; an operand that the kernel only slices, gathers from or
updates in place counts the slice (or update) instead of the whole array. FLOPs: 2 x output
elements x contracted size for every dot, cuDNN attention as 4 x batch x heads x seq^2 x dim
(halved for a causal mask; x 2.5 for the backward kernel), the library's LM-head Triton
kernels as their logits matmul (their table counted once: its tiles are shared in L2 by the
programs running at once). No dependency beyond the standard library.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
               "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(DTYPE_BYTES, key=len, reverse=True))
                    + r")\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
# ops that launch no kernel of their own
_FREE = {"parameter", "get-tuple-element", "bitcast", "tuple", "constant", "after-all",
         "partition-id", "replica-id", "opt-barrier", "add-dependency"}
_SLICING = {"dynamic-slice", "slice", "gather"}


def array_shapes(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of every array in an HLO shape string, in order: one for an array
    ('bf16[2048,896]{1,0}' -> [('bf16', (2048, 896))]), a tuple's elements for a tuple."""
    return [(dtype, tuple(int(d) for d in dims.split(",") if d))
            for dtype, dims in _ARRAY.findall(shape)]


def array_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape string (a tuple's elements summed)."""
    return sum(math.prod(dims) * DTYPE_BYTES[dtype] for dtype, dims in array_shapes(shape))


def _dims(shape: str) -> list[int]:
    arrays = array_shapes(shape)
    return list(arrays[0][1]) if arrays else []


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    op: str
    operands: list[str]
    attributes: str
    arguments: str  # the text between the op's parentheses (a parameter's number)


def parse_hlo(text: str) -> dict[str, list[Instruction]]:
    """{computation name ("ENTRY" for the entry): its instructions, in order}."""
    computations: dict[str, list[Instruction]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("ENTRY "):
            current = computations.setdefault("ENTRY", [])
            continue
        if line.startswith("%") and line.rstrip().endswith("{"):
            current = computations.setdefault(line.split()[0][1:], [])
            continue
        if line.startswith("}"):
            current = None
            continue
        match = _INSTRUCTION.match(line) if current is not None else None
        if not match:
            continue
        name, shape, op, rest = match.groups()
        depth, end = 1, 0
        while end < len(rest) and depth:  # the operand list ends at the matching parenthesis
            depth += {"(": 1, ")": -1}.get(rest[end], 0)
            end += 1
        arguments = rest[:end - 1]
        current.append(Instruction(name, shape, op, re.findall(r"%([\w.\-]+)", arguments),
                                   rest[end:], arguments))
    return computations


@dataclasses.dataclass
class Kernel:
    name: str
    kind: str  # the fused computation's name without its number, or the op / library call
    category: str  # matmul, attention, reduction, elementwise, copy, other
    bytes: int
    flops: float
    calls: int  # launches per run of the program (loop iterations included)
    shape: str

    def seconds(self, bandwidth: float, peak_flops: float) -> float:
        return self.calls * max(self.bytes / bandwidth, self.flops / peak_flops)


def _dot_flops(dot: Instruction, shapes: dict[str, str]) -> float:
    """A dot, or a cuBLAS GEMM call (its contracting dims in the backend config)."""
    lhs = _dims(shapes.get(dot.operands[0], ""))
    contracting = (re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", dot.attributes)
                   or re.search(r'"lhs_contracting_dimensions":\[([0-9",]*)\]', dot.attributes))
    dims = contracting.group(1).replace('"', "").split(",") if contracting else []
    contracted = math.prod(lhs[int(i)] for i in dims if i) if lhs else 1
    return 2.0 * math.prod(_dims(dot.shape)) * contracted


def _attention_flops(call: Instruction, shapes: dict[str, str]) -> float:
    """cuDNN fused attention; q is [batch, seq, heads, dim] (the layout JAX passes)."""
    batch, seq, heads, dim = (_dims(shapes.get(call.operands[0], "")) + [0] * 4)[:4]
    flops = 4.0 * batch * heads * seq * seq * dim / 2  # causal: half the score matrix
    return flops * (2.5 if "Backward" in call.attributes else 1.0)


# the library's Triton kernels (pallas_call names): each is a matmul of its operand 0, rows
# [n, hidden], by its operand 1, a matrix holding `hidden` along one axis
_LIBRARY_KERNELS = re.compile(r"lm_head_|mlp_gate_up_gradients")


def _library_kernel_flops(call: Instruction, shapes: dict[str, str]) -> float:
    """The library's Triton kernels: the LM head's (hafrm_jax/model/head_kernel.py; the table
    [vocab, hidden] or [hidden, vocab]) and the MLP's backward (hafrm_jax/model/mlp_kernel.py;
    w_down [mlp, hidden]): 2 * n * the matrix's elements."""
    rows, hidden = (_dims(shapes.get(call.operands[0], "")) + [0, 0])[:2]
    table = math.prod(_dims(shapes.get(call.operands[1], ""))) if len(call.operands) > 1 else 0
    return 2.0 * rows * table


def _sliced_reads(name: str, users: dict) -> list[int] | None:
    """The elements read of `name` where every use of it (looking through bitcasts and element
    type converts, which XLA computes per element) is as the array sliced (operand 0 of a
    slice, dynamic-slice or gather): one entry per slice; None where any use reads it whole."""
    found = []
    for user in users.get(name, []):
        if user.op in ("bitcast", "convert"):
            deeper = _sliced_reads(user.name, users)
            if deeper is None:
                return None
            found += deeper
        elif user.op in _SLICING and user.operands[0] == name:
            found.append(math.prod(_dims(user.shape)))
        else:
            return None
    return found


def _fusion_bytes(call: Instruction, body: list[Instruction], shapes: dict[str, str]) -> int:
    """Bytes a fusion moves: its result and operands, an operand only sliced counted as its
    slices, and an in-place dynamic-update-slice or scatter as its update alone (XLA writes
    both into their operand's buffer where nothing else reads it, as it does for the LM head's
    d_logits and the embedding's gradient)."""
    params = {int(i.arguments): i.name for i in body if i.op == "parameter"}
    users = collections.defaultdict(list)
    for instruction in body:
        for operand in instruction.operands:
            users[operand].append(instruction)
    total = 0
    in_place = set()
    root = body[-1] if body else None
    update = {"dynamic-update-slice": 1, "scatter": 2}.get(root.op) if root is not None else None
    if update is not None and root.operands[0] in params.values():
        in_place.add(root.operands[0])
        total += array_bytes(shapes.get(root.operands[update], root.shape))  # the update written
    else:
        total += array_bytes(call.shape)
    for position, operand in enumerate(call.operands):
        param = params.get(position)
        if param in in_place:
            continue
        operand_shape = shapes.get(operand, "")
        sliced = _sliced_reads(param, users)
        dtype = _ARRAY.search(operand_shape)
        if sliced and dtype:  # counted in the operand's own element type
            total += sum(sliced) * DTYPE_BYTES[dtype.group(1)]
        else:
            total += array_bytes(operand_shape)
    return total


_CATEGORY = (("attention", re.compile(r"fmha|attention", re.I)),
             ("matmul", re.compile(r"gemm|dot|cublas", re.I)),
             ("copy", re.compile(r"^copy|transpose|memcpy", re.I)),
             ("reduction", re.compile(r"reduce|scatter", re.I)),
             ("elementwise", re.compile(r"fused_|wrapped_|^loop|convert|select|add|multiply")))


def _category(kind: str) -> str:
    for label, pattern in _CATEGORY:
        if pattern.search(kind):
            return label
    return "other"


def program_kernels(text: str, unknown_trips: int = 1) -> list[Kernel]:
    """The kernels a compiled program launches, loop bodies included (see module doc)."""
    computations = parse_hlo(text)
    shapes = {i.name: i.shape for body in computations.values() for i in body}

    def walk(computation: str, calls: int) -> list[Kernel]:
        kernels = []
        for instruction in computations.get(computation, []):
            if instruction.op in _FREE:
                continue
            if instruction.op == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', instruction.attributes)
                body = re.search(r"body=%([\w.\-]+)", instruction.attributes).group(1)
                kernels += walk(body, calls * (int(trips.group(1)) if trips else unknown_trips))
                continue
            if instruction.op in ("call", "conditional", "async-start", "async-done"):
                continue  # rare in these programs; their bodies are not walked
            called = re.search(r"calls=%([\w.\-]+)", instruction.attributes)
            flops = 0.0
            kind = instruction.op
            if instruction.op == "custom-call":
                target = re.search(r'custom_call_target="([^"]+)"', instruction.attributes)
                kind = target.group(1) if target else kind
                if "fmha" in kind:
                    flops = _attention_flops(instruction, shapes)
                elif "triton" in kind and _LIBRARY_KERNELS.search(instruction.attributes):
                    flops = _library_kernel_flops(instruction, shapes)
                elif "gemm" in kind:
                    flops = _dot_flops(instruction, shapes)
            elif instruction.op == "dot":
                flops = _dot_flops(instruction, shapes)
            if called and instruction.op == "fusion":
                body = computations.get(called.group(1), [])
                kind = re.sub(r"(\.\d+)?(_computation)?(\.\d+)?$", "", called.group(1))
                flops = sum(_dot_flops(i, shapes) for i in body if i.op == "dot")
                size = _fusion_bytes(instruction, body, shapes)
            else:
                size = array_bytes(instruction.shape) + sum(
                    array_bytes(shapes.get(o, "")) for o in instruction.operands)
            category = "matmul" if flops and "fmha" not in kind else _category(kind)
            kernels.append(Kernel(instruction.name, kind, category, size, flops, calls,
                                  instruction.shape[:100]))
        return kernels

    return walk("ENTRY", 1)


def bound_seconds(kernels: list[Kernel], bandwidth: float, peak_flops: float) -> float:
    """The roofline bound of a run of these kernels: each kernel's bound, summed."""
    return sum(k.seconds(bandwidth, peak_flops) for k in kernels)


def format_roofline(kernels: list[Kernel], bandwidth: float, peak_flops: float,
                    top: int = 12) -> str:
    """Markdown: the bound by category, then the kernels with the largest bounds."""
    total = bound_seconds(kernels, bandwidth, peak_flops) or 1e-30
    moved = sum(k.bytes * k.calls for k in kernels)
    flops = sum(k.flops * k.calls for k in kernels)
    lines = [f"roofline bound {total * 1e3:.1f} ms a run: {moved / 1e9:.1f} GB moved, "
             f"{flops / 1e12:.2f} TFLOP of matmuls and attention "
             f"({bandwidth / 1e12:.2f} TB/s, {peak_flops / 1e12:.0f} TFLOP/s)", "",
             "| category | kernels | launches | GB | TFLOP | bound ms | share |",
             "|---|---|---|---|---|---|---|"]
    by_category = collections.defaultdict(list)
    for k in kernels:
        by_category[k.category].append(k)
    for label, group in sorted(by_category.items(),
                               key=lambda kv: -bound_seconds(kv[1], bandwidth, peak_flops)):
        seconds = bound_seconds(group, bandwidth, peak_flops)
        lines.append(f"| {label} | {len(group)} | {sum(k.calls for k in group)} | "
                     f"{sum(k.bytes * k.calls for k in group) / 1e9:.2f} | "
                     f"{sum(k.flops * k.calls for k in group) / 1e12:.2f} | "
                     f"{seconds * 1e3:.2f} | {seconds / total:.1%} |")
    lines += ["", "| kernel | kind | launches | GB each | TFLOP each | bound ms | result |",
              "|---|---|---|---|---|---|---|"]
    for k in sorted(kernels, key=lambda k: -k.seconds(bandwidth, peak_flops))[:top]:
        lines.append(f"| `{k.name}` | {k.kind} | {k.calls} | {k.bytes / 1e9:.3f} | "
                     f"{k.flops / 1e12:.3f} | {k.seconds(bandwidth, peak_flops) * 1e3:.2f} | "
                     f"`{k.shape}` |")
    return "\n".join(lines)


def match_profile(kernels: list[Kernel], timelines: list[dict[str, float]]) -> dict[str, float]:
    """{kernel name: measured ms per step} from the profiled timeline whose op names match the
    most of the program's kernels (a GPU kernel is named after its instruction with `_N` for
    `.N`; CPU events carry the instruction's name)."""
    names = {k.name for k in kernels}
    best: dict[str, float] = {}
    for ops in timelines:
        matched: dict[str, float] = {}
        for op, ms in ops.items():
            name = op if op in names else re.sub(r"_(\d+)$", r".\1", op)
            if name in names:
                matched[name] = matched.get(name, 0.0) + ms
        if sum(matched.values()) > sum(best.values()):
            best = matched
    return best


def format_against_profile(kernels: list[Kernel], measured: dict[str, float], bandwidth: float,
                           peak_flops: float, top: int = 12) -> str:
    """Markdown: the kernels that lose the most time against their roofline bound."""
    by_name = {k.name: k for k in kernels}
    rows = sorted(((name, ms, by_name[name].seconds(bandwidth, peak_flops) * 1e3)
                   for name, ms in measured.items()), key=lambda r: r[2] - r[1])
    total, bound = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines = [f"{len(rows)} of {len(kernels)} kernels matched in the profile: {total:.2f} ms a "
             f"step measured, {bound:.2f} ms bound ({bound / total if total else 0:.0%})", "",
             "| kernel | category | measured ms | bound ms | lost ms | of bound |",
             "|---|---|---|---|---|---|"]
    for name, ms, bound_ms in rows[:top]:
        lines.append(f"| `{name}` | {by_name[name].category} | {ms:.3f} | {bound_ms:.3f} | "
                     f"{ms - bound_ms:.3f} | {bound_ms / ms if ms else 0:.0%} |")
    return "\n".join(lines)


# An H100 SXM's memory bandwidth (spec) and bf16 matmul peak (measured, bench/RESULTS.md).
H100_BANDWIDTH_TB_S = 3.35
H100_PEAK_TFLOPS = 689.0

# Memory bandwidth by the vendor's datasheets, keyed by JAX's `device_kind` as these GPUs report
# it; the first key found in the name wins, so the specific parts come before the plain H100.
DATASHEET_BANDWIDTH_TB_S = (("H200", 4.8), ("H100 PCIe", 2.0), ("H100 NVL", 3.9),
                            ("H100", H100_BANDWIDTH_TB_S))


def device_bandwidth_tb_s(device_kind: str) -> float | None:
    """The datasheet memory bandwidth of a GPU named `device_kind` ("NVIDIA H200"), or None
    for a device not in DATASHEET_BANDWIDTH_TB_S."""
    return next((tb_s for key, tb_s in DATASHEET_BANDWIDTH_TB_S if key in device_kind), None)


def add_roofline_options(parser: argparse.ArgumentParser) -> None:
    """--bandwidth-tb-s and --peak-tflops, the two rates of the bound (an H100's by default)."""
    parser.add_argument("--bandwidth-tb-s", type=float, default=H100_BANDWIDTH_TB_S,
                        help="memory bandwidth; default: an H100 SXM's")
    parser.add_argument("--peak-tflops", type=float, default=H100_PEAK_TFLOPS,
                        help="matmul peak; default: bench/RESULTS.md's measured H100 figure")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("program", help="optimized HLO text of a compiled program")
    add_roofline_options(parser)
    parser.add_argument("--unknown-trips", type=int, default=1)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    with open(args.program) as f:
        kernels = program_kernels(f.read(), args.unknown_trips)
    print(format_roofline(kernels, args.bandwidth_tb_s * 1e12, args.peak_tflops * 1e12,
                          args.top))


if __name__ == "__main__":
    main()
