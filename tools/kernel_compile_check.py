"""`python tools/kernel_compile_check.py`: compile every kernel for a real GPU without one.

Each wrapper is called on CPU tensors of the shapes and dtypes the runtime uses. Triton binds and
specialises the arguments exactly as for a launch, against a compile-only driver that reports the target
GPU (default: sm_90, the H100/H200). A `jit_cache_hook` then compiles the kernel to a cubin with the ptxas
bundled in Triton's wheel and skips the launch. `cuobjdump` reads each cubin's resource usage.

A kernel fails the check when:
- it does not compile;
- it spills registers to local memory;
- it needs more shared memory than the target has.

This finds what the CPU interpreter cannot: lowering and layout errors, register pressure and shared
memory, all before a GPU session. Every compiled specialisation is listed with its warps, registers and
shared memory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("kernel_compile_check compiles for a GPU: unset TRITON_INTERPRET")

import torch
import triton
from triton import knobs
from triton.backends import DriverBase
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.driver import driver

# Shared memory one block may use, by compute capability (bytes).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
# (query heads, KV heads, head dim): the default model, GQA 8 with head dim 128, and no GQA.
ATTENTION_SHAPES = ((9, 3, 64), (32, 8, 128), (8, 1, 128), (16, 16, 64))
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass
class Compiled:
    kernel: str
    case: str
    num_warps: int
    num_stages: int
    registers: int
    shared_bytes: int
    local_bytes: int  # > 0: registers spilled
    compile_s: float


class CompileOnlyDriver(DriverBase):
    """Reports a GPU target so Triton binds and specialises arguments; launches never reach it."""

    def __init__(self, target: GPUTarget):
        super().__init__()
        self.target = target

    @classmethod
    def is_active(cls) -> bool:
        return False

    def map_python_to_cpp_type(self, ty: str) -> str:
        raise NotImplementedError("compile-only driver")

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_benchmarker(self):
        raise NotImplementedError("compile-only driver")

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resource_usage(cubin: bytes) -> tuple[int, int, int]:
    """(registers, shared bytes, local bytes) of the cubin's kernel, from `cuobjdump`."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        text = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(f.name)
    found = re.search(r"REG:(\d+).*?SHARED:(\d+).*?LOCAL:(\d+)", text)
    if found is None:
        raise RuntimeError(f"cannot read cuobjdump's resource usage:\n{text}")
    return int(found[1]), int(found[2]), int(found[3])


class Checker:
    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)
        self.results: list[Compiled] = []
        self.case = ""

    def _hook(self, *, fn: Any, compile: dict[str, Any], **_: Any) -> bool:
        src = ASTSource(fn.jit_function, compile["signature"], compile["constants"], compile["configs"][0])
        options = {k: compile[k] for k in ("num_warps", "num_ctas", "num_stages", "enable_fp_fusion")}
        start = time.perf_counter()
        kernel = triton.compile(src, target=self.target, options=options)
        elapsed = time.perf_counter() - start
        regs, _shared_static, local = resource_usage(kernel.asm["cubin"])
        self.results.append(
            Compiled(
                fn.name,
                self.case,
                compile["num_warps"],
                compile["num_stages"],
                regs,
                kernel.metadata.shared,
                local,
                round(elapsed, 2),
            )
        )
        return True  # compiled here: skip Triton's own compile and the launch

    def run(self, cases: list[tuple[str, Callable[[], Any]]]) -> list[str]:
        """Call each case's wrapper; return the failures (compile errors)."""
        failures = []
        previous = knobs.runtime.jit_cache_hook
        driver.set_active(CompileOnlyDriver(self.target))
        knobs.runtime.jit_cache_hook = self._hook
        try:
            for case, call in cases:
                self.case = case
                try:
                    call()
                except Exception as exc:
                    failures.append(f"{case}: {type(exc).__name__}: {str(exc).strip()[:2000]}")
        finally:
            knobs.runtime.jit_cache_hook = previous
            try:
                driver.reset_active()
            except RuntimeError:  # no GPU driver on this machine to go back to
                pass
        return failures


def cases(dtypes: tuple[torch.dtype, ...] = DTYPES) -> list[tuple[str, Callable[[], Any]]]:
    from loomlm.kernels import decode_attention, extend_attention, fused_ops, rope_kv

    out: list[tuple[str, Callable[[], Any]]] = []
    for dtype in dtypes:
        name = str(dtype).split(".")[-1]
        for heads, kv_heads, dim in ATTENTION_SHAPES:
            shape = f"{name} H={heads} KVH={kv_heads} D={dim}"
            slots = 64
            k_buf = torch.zeros(slots, kv_heads, dim, dtype=dtype)
            table = torch.zeros(4, slots, dtype=torch.int32)
            rows = torch.arange(2, dtype=torch.int64)
            lens = torch.full((2,), 8, dtype=torch.int32)
            q = torch.zeros(2, heads, dim, dtype=dtype)
            out.append(
                (
                    f"decode_attention {shape}",
                    lambda q=q, k=k_buf, t=table, r=rows, n=lens: decode_attention.decode_attention(
                        q, k, k, t, r, n, 0.125, num_kv_splits=4
                    ),
                )
            )
            qkv = torch.zeros(16, (heads + 2 * kv_heads) * dim, dtype=dtype)
            q_ext = qkv[:, : heads * dim].view(16, heads, dim)
            starts = torch.tensor([0, 8], dtype=torch.int32)
            out.append(
                (
                    f"extend_attention {shape}",
                    lambda q=q_ext, k=k_buf, t=table, r=rows, n=lens, s=starts: extend_attention.extend_attention(
                        q, k, k, t, r, n, n, s, 0.125, max_extend=8
                    ),
                )
            )
            qk = qkv[:, : (heads + kv_heads) * dim].view(16, heads + kv_heads, dim)
            cos = torch.zeros(32, dim // 2)
            positions = torch.zeros(16, dtype=torch.int64)
            out.append((f"apply_rope_ {shape}", lambda x=qk, p=positions, c=cos: rope_kv.apply_rope_(x, p, c, c)))
            kv = qkv[:, heads * dim : (heads + kv_heads) * dim].view(16, kv_heads, dim)
            slot_ids = torch.arange(16, dtype=torch.int64)
            out.append((f"store_kv_ {shape}", lambda k=k_buf, x=kv, s=slot_ids: rope_kv.store_kv_(k, k, x, x, s)))
        for hidden in (576, 4096):
            x = torch.zeros(4, hidden, dtype=dtype)
            w = torch.zeros(hidden, dtype=dtype)
            out.append((f"rms_norm {name} hidden={hidden}", lambda x=x, w=w: fused_ops.rms_norm(x, w, 1e-5)))
            out.append(
                (
                    f"rms_norm+residual {name} hidden={hidden}",
                    lambda x=x, w=w: fused_ops.rms_norm(x, w, 1e-5, x.clone()),
                )
            )
        for inter in (1536, 14336):
            gate_up = torch.zeros(4, 2 * inter, dtype=dtype)
            out.append((f"silu_and_mul {name} I={inter}", lambda x=gate_up: fused_ops.silu_and_mul(x)))
    logits = torch.zeros(2, 49152)
    mask = torch.zeros(2, 49152 // 32, dtype=torch.int32)
    out.append(("apply_token_bitmask_ float32 V=49152", lambda: fused_ops.apply_token_bitmask_(logits, mask)))
    return out


def check(arch: int, dtypes: tuple[torch.dtype, ...] = DTYPES) -> tuple[list[Compiled], list[str]]:
    """Compile every case of `dtypes` for compute capability `arch`; (compiled kernels, failures)."""
    checker = Checker(arch)
    failures = checker.run(cases(dtypes))
    limit = SHARED_LIMIT.get(arch, 99 * 1024)
    for r in checker.results:
        if r.local_bytes:
            failures.append(f"{r.case}: {r.kernel} spills {r.local_bytes} bytes of registers to local memory")
        if r.shared_bytes > limit:
            failures.append(f"{r.case}: {r.kernel} needs {r.shared_bytes} bytes of shared memory (limit {limit})")
    return checker.results, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/kernel_compile_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON")
    parser.add_argument(
        "--dtypes",
        default=",".join(str(d).split(".")[-1] for d in DTYPES),
        help="comma-separated input dtypes to compile for (the bitmask kernel is float32 always)",
    )
    args = parser.parse_args(argv)
    by_name = {str(d).split(".")[-1]: d for d in DTYPES}
    unknown = [n for n in args.dtypes.split(",") if n not in by_name]
    if unknown:
        parser.error(f"unknown dtype(s) {unknown}; choose from {sorted(by_name)}")
    results, failures = check(args.arch, tuple(by_name[n] for n in args.dtypes.split(",")))
    width = max((len(r.case) for r in results), default=4)
    print(f"{'case'.ljust(width)}  {'kernel':<22} warps stages  regs  shared B  local B  compile s")
    for r in results:
        print(
            f"{r.case.ljust(width)}  {r.kernel:<22} {r.num_warps:>5} {r.num_stages:>6} {r.registers:>5} "
            f"{r.shared_bytes:>9} {r.local_bytes:>8} {r.compile_s:>10.2f}"
        )
    print(f"{len(results)} kernels compiled for sm_{args.arch}; {len(failures)} failure(s)")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "arch": args.arch,
                    "triton": triton.__version__,
                    "compiled": [asdict(r) for r in results],
                    "failures": failures,
                }
            )
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
