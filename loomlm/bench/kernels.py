"""`python -m loomlm.bench kernels`: the Triton kernels' time and achieved memory bandwidth on one GPU.

First the device's copy bandwidth is measured in the same run: a device-to-device `copy_` of a 1 GiB
buffer, (bytes read + bytes written) / time, best of 10. Every kernel row then reports its median time
(`triton.testing.do_bench`: CUDA events around the kernel only, L2 flushed before each repetition, warm-up
first), the bytes it must move, the achieved GB/s (1 GB = 1e9 bytes) and that as a share of the copy
bandwidth. The issue's target is decode attention at batch 64 x context 2048 >= 70 % of copy bandwidth.

Bytes counted per kernel (the minimum a kernel has to read and write, so extra traffic counts against it):

* decode attention: every K and V element of each request's context once, its slot-table entries (int32),
  q, the output, and the per-request row and length; NOT the split intermediates (float32 partial outputs
  and log-sum-exps written by the split pass and read by the merge pass; the JSON gives them as
  `intermediate_bytes`);
* extend attention: q, the output, each request's K/V (prefix + new) and slot entries once; it is
  compute-bound, so its rows also give TFLOP/s (2 matmuls x 2 FLOP per (query, visible key, head, dim));
* rms_norm + residual: x and residual read, the output and the new residual written, the weight read;
* silu_and_mul: [T, 2I] read, [T, I] written;
* apply_rope_: q and k heads read and written, positions, and one cos and one sin row per token;
* store_kv_: new k and v read and written to their slots, the slot ids;
* apply_token_bitmask_: the packed mask and row ids read, and only the logits it sets to -inf written
  (the kernel never reads the logits); 5 % of the vocabulary is allowed, as under a typical grammar.

Decode attention uses SmolLM2-135M's attention shape (9 query heads, 3 KV heads, head_dim 64), a bf16 KV
pool, and slot tables that are a random permutation of the pool (as a real pool ends up). `num_kv_splits`
is chosen per shape as the runtime's Triton backend chooses it: about `--programs-per-sm` (4) programs
(batch x KV heads x splits) per SM, so more splits when batch x KV heads is small, at most `--max-splits`
(16); the table prints the choice, `--splits` fixes it, `--sweep-splits` also times 1, 2, 4, ..., 64
splits (no more than context / block_n) and reports the fastest.

Baseline column: for decode, torch SDPA on already gathered, contiguous K/V of the same size (no slot
gather, the query heads of a KV head folded into the query dimension: an upper-bound-ish reference); for
extend, SDPA on gathered, GQA-expanded K/V with a boolean causal mask (`is_causal` when there is no
prefix); for the element-wise kernels, the unfused torch reference in `loomlm.kernels.reference`. Each
row also gives the largest absolute difference between the kernel's and the baseline's output.

Without CUDA it exits with status 2, unless TRITON_INTERPRET=1: then it runs in Triton's interpreter on
CPU over a tiny grid, in float32 (the interpreter's bf16 arithmetic is not faithful), so CI can
smoke-test the script; those timings are meaningless and say so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import torch
import triton

from loomlm.bench.kernel_timing import LEGEND, Timer, copy_bandwidth, format_rows, make_row, max_err
from loomlm.kernels import attention_block, fused_ops, reference, rope_kv
from loomlm.kernels import decode_attention as decode_mod
from loomlm.kernels.extend_attention import extend_attention

PROG = "python -m loomlm.bench kernels"
HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64  # SmolLM2-135M
HIDDEN, INTERMEDIATE, VOCAB = 576, 1536, 49152
ROPE_POSITIONS = 8192
ALLOWED_FRACTION = 0.05
TARGET_PCT = 70.0
TARGET_SHAPE = (64, 2048)  # (batch, context) of the headline figure

FULL_GRID = {
    "decode": ([1, 16, 64, 256], [512, 2048, 8192]),
    "tokens": [256, 8192],
    "bitmask_rows": 256,
    "extend": [(16, 512, 1024), (4, 2048, 0)],
    "copy_bytes": 1 << 30,
}
SMALL_GRID = {
    "decode": ([1, 2], [32, 80]),
    "tokens": [3],
    "bitmask_rows": 2,
    "extend": [(2, 20, 16)],
    "copy_bytes": 16 << 20,
}
SWEEP_SPLITS = (1, 2, 4, 8, 16, 32, 64)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    p.add_argument(
        "--sizes",
        choices=("auto", "full", "small"),
        default="auto",
        help="full grid, or a tiny one (auto: full on CUDA, small in the interpreter)",
    )
    p.add_argument("--splits", type=int, default=None, help="num_kv_splits for every decode shape")
    p.add_argument("--sweep-splits", action="store_true", help="also time 1..64 splits per decode shape")
    p.add_argument("--programs-per-sm", type=int, default=4, help="decode split heuristic's target")
    p.add_argument("--max-splits", type=int, default=16, help="decode split heuristic's cap")
    p.add_argument("--block-n", type=int, default=64, help="decode attention's keys per block (the kernel's default)")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="time CUDA-graph replays of each call (no host launch overhead; L2 still flushed)",
    )
    p.add_argument("--skip-baseline", action="store_true", help="time the Triton kernels only")
    p.add_argument("--warmup-ms", type=int, default=25, help="do_bench warm-up time per measurement")
    p.add_argument("--rep-ms", type=int, default=100, help="do_bench repetition time per measurement")
    p.add_argument("--seed", type=int, default=0)
    return p


class Bench:
    def __init__(self, args: argparse.Namespace, device: torch.device, grid: dict[str, Any], copy_gb_s: float):
        self.args, self.device, self.grid, self.copy_gb_s = args, device, grid, copy_gb_s
        # bf16 on the GPU; float32 in the interpreter, whose bf16 arithmetic works on the raw bits.
        self.dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        self.time = Timer(device, args.warmup_ms, args.rep_ms, args.cuda_graph)
        self.sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
        self.gen = torch.Generator(device=device).manual_seed(args.seed)

    def randn(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen, device=self.device, dtype=dtype or self.dtype)

    def randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.gen, device=self.device)

    def baseline(self, fn: Callable[[], Any]) -> float | None:
        return None if self.args.skip_baseline else self.time(fn)

    # ---------------------------------------------------------------- decode attention
    def decode(self, batch: int, context: int) -> dict[str, Any]:
        e = self.dtype.itemsize
        slots = batch * context
        k_buffer, v_buffer = self.randn(slots, KV_HEADS, HEAD_DIM), self.randn(slots, KV_HEADS, HEAD_DIM)
        req_to_token = self.randperm(slots).to(torch.int32).view(batch, context)  # scattered over the pool
        req_rows = self.randperm(batch).to(torch.int32)  # rows not in batch order
        seq_lens = torch.full((batch,), context, dtype=torch.int32, device=self.device)
        q = self.randn(batch, HEADS, HEAD_DIM)
        out = torch.empty_like(q)
        scale = HEAD_DIM**-0.5
        block_n = self.args.block_n
        splits = self.args.splits or decode_mod.default_num_kv_splits(
            batch, KV_HEADS, self.sms, self.args.programs_per_sm, self.args.max_splits
        )

        def run(s: int) -> Callable[[], Any]:
            return lambda: decode_mod.decode_attention(
                q,
                k_buffer,
                v_buffer,
                req_to_token,
                req_rows,
                seq_lens,
                scale,
                num_kv_splits=s,
                block_n=block_n,
                out=out,
            )

        us = self.time(run(splits))
        used = splits
        nbytes = (
            2 * batch * context * KV_HEADS * HEAD_DIM * e
            + batch * context * 4
            + 2 * batch * HEADS * HEAD_DIM * e
            + 2 * batch * 4
        )
        extra: dict[str, Any] = {
            "batch": batch,
            "context": context,
            "num_kv_splits": used,
            "programs": batch * KV_HEADS * used,
            "intermediate_bytes": 2 * batch * HEADS * used * (HEAD_DIM + 1) * 4,
            "flops": 4 * batch * HEADS * HEAD_DIM * context,
        }
        if self.args.sweep_splits:
            sweep = {s: round(self.time(run(s)), 2) for s in SWEEP_SPLITS if s == 1 or s <= context // block_n}
            best = min(sweep, key=sweep.__getitem__)
            extra.update(
                splits_sweep_us={str(s): t for s, t in sweep.items()}, best_splits=best, best_time_us=sweep[best]
            )
        # Baseline: the same attention on contiguous [B, KVH, L, D] K/V, query heads folded per KV head.
        table = req_to_token[req_rows.long()].long()  # [B, L]
        k_c = k_buffer[table].transpose(1, 2).contiguous()
        v_c = v_buffer[table].transpose(1, 2).contiguous()
        q4 = q.view(batch, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM)

        def sdpa() -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q4, k_c, v_c, scale=scale)

        extra["baseline"] = "torch sdpa on contiguous, pre-gathered K/V"
        extra["baseline_us"] = self.baseline(sdpa)
        run(splits)()
        extra["max_abs_err_vs_baseline"] = max_err((out, sdpa().reshape(batch, HEADS, HEAD_DIM)))
        return make_row("decode_attention", f"b={batch} ctx={context}", us, nbytes, self.copy_gb_s, **extra)

    # ---------------------------------------------------------------- extend attention
    def extend(self, batch: int, new: int, prefix: int) -> dict[str, Any]:
        e = self.dtype.itemsize
        total = prefix + new
        slots = batch * total
        k_buffer, v_buffer = self.randn(slots, KV_HEADS, HEAD_DIM), self.randn(slots, KV_HEADS, HEAD_DIM)
        req_to_token = self.randperm(slots).to(torch.int32).view(batch, total)
        req_rows = self.randperm(batch).to(torch.int32)

        def full(value: int) -> torch.Tensor:
            return torch.full((batch,), value, dtype=torch.int32, device=self.device)

        prefix_lens, extend_lens = full(prefix), full(new)
        extend_starts = torch.arange(batch, dtype=torch.int32, device=self.device) * new
        q = self.randn(batch * new, HEADS, HEAD_DIM)
        out = torch.empty_like(q)
        scale = HEAD_DIM**-0.5

        def run() -> torch.Tensor:
            return extend_attention(
                q,
                k_buffer,
                v_buffer,
                req_to_token,
                req_rows,
                prefix_lens,
                extend_lens,
                extend_starts,
                scale,
                max_extend=new,
                out=out,
            )

        us = self.time(run)
        visible = new * prefix + new * (new + 1) // 2  # (query, key) pairs per request and head
        flops = 4 * batch * HEADS * HEAD_DIM * visible
        nbytes = 2 * batch * total * KV_HEADS * HEAD_DIM * e + batch * total * 4 + 2 * q.numel() * e
        table = req_to_token[req_rows.long()].long()
        group = HEADS // KV_HEADS
        k_c = k_buffer[table].transpose(1, 2).repeat_interleave(group, dim=1).contiguous()  # [B, H, L, D]
        v_c = v_buffer[table].transpose(1, 2).repeat_interleave(group, dim=1).contiguous()
        q_b = q.view(batch, new, HEADS, HEAD_DIM).transpose(1, 2)
        keys = torch.arange(total, device=self.device)
        mask = keys[None, :] <= prefix + torch.arange(new, device=self.device)[:, None]  # [E, L]
        # Without a prefix the mask is plain causal: is_causal lets SDPA use its flash kernel.
        masking: dict[str, Any] = {"is_causal": True} if prefix == 0 else {"attn_mask": mask}

        def sdpa() -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q_b, k_c, v_c, scale=scale, **masking)

        baseline_us = self.baseline(sdpa)
        run()
        err = max_err((out, sdpa().transpose(1, 2).reshape(batch * new, HEADS, HEAD_DIM)))
        return make_row(
            "extend_attention",
            f"{batch}x{new} new over {prefix} prefix",
            us,
            nbytes,
            self.copy_gb_s,
            batch=batch,
            extend_len=new,
            prefix_len=prefix,
            flops=flops,
            baseline="torch sdpa on contiguous, GQA-expanded K/V, "
            + ("is_causal" if prefix == 0 else "boolean causal mask"),
            baseline_us=baseline_us,
            max_abs_err_vs_baseline=err,
        )

    # ---------------------------------------------------------------- element-wise kernels
    def rms_norm(self, tokens: int) -> dict[str, Any]:
        x, res = self.randn(tokens, HIDDEN), self.randn(tokens, HIDDEN)
        w = self.randn(HIDDEN) * 0.1 + 1
        us = self.time(lambda: fused_ops.rms_norm(x, w, 1e-5, res))
        err = max_err(*zip(fused_ops.rms_norm(x, w, 1e-5, res), reference.rms_norm(x, w, 1e-5, res)))
        nbytes = (4 * tokens + 1) * HIDDEN * self.dtype.itemsize
        return make_row(
            "rms_norm+residual",
            f"[{tokens}, {HIDDEN}]",
            us,
            nbytes,
            self.copy_gb_s,
            tokens=tokens,
            baseline="torch reference (unfused)",
            baseline_us=self.baseline(lambda: reference.rms_norm(x, w, 1e-5, res)),
            max_abs_err_vs_baseline=err,
        )

    def silu_and_mul(self, tokens: int) -> dict[str, Any]:
        x = self.randn(tokens, 2 * INTERMEDIATE)
        us = self.time(lambda: fused_ops.silu_and_mul(x))
        err = max_err((fused_ops.silu_and_mul(x), reference.silu_and_mul(x)))
        nbytes = 3 * tokens * INTERMEDIATE * self.dtype.itemsize
        return make_row(
            "silu_and_mul",
            f"[{tokens}, {2 * INTERMEDIATE}]",
            us,
            nbytes,
            self.copy_gb_s,
            tokens=tokens,
            baseline="torch reference (unfused)",
            baseline_us=self.baseline(lambda: reference.silu_and_mul(x)),
            max_abs_err_vs_baseline=err,
        )

    def _qkv(self, tokens: int) -> torch.Tensor:
        """The fused qkv projection's output as [T, H + 2 KVH, D]; q and k heads are its first H + KVH."""
        return self.randn(tokens, HEADS + 2 * KV_HEADS, HEAD_DIM)

    def rope(self, tokens: int) -> dict[str, Any]:
        qkv = self._qkv(tokens)
        qk = qkv[:, : HEADS + KV_HEADS]  # [T, 12, 64] view, row stride 960
        positions = torch.randint(0, ROPE_POSITIONS, (tokens,), generator=self.gen, device=self.device)
        angle = self.randn(ROPE_POSITIONS, HEAD_DIM // 2, dtype=torch.float32)
        cos, sin = angle.cos(), angle.sin()
        us = self.time(lambda: rope_kv.apply_rope_(qk, positions, cos, sin))
        ours, ref = qkv.clone(), qkv.clone()
        rope_kv.apply_rope_(ours[:, : HEADS + KV_HEADS], positions, cos, sin)
        reference.apply_rope_(ref[:, : HEADS + KV_HEADS], positions, cos, sin)
        nbytes = 2 * qk.numel() * self.dtype.itemsize + tokens * 8 + 2 * tokens * (HEAD_DIM // 2) * 4
        return make_row(
            "apply_rope_",
            f"[{tokens}, {HEADS + KV_HEADS}, {HEAD_DIM}] view",
            us,
            nbytes,
            self.copy_gb_s,
            tokens=tokens,
            baseline="torch reference (unfused)",
            baseline_us=self.baseline(lambda: reference.apply_rope_(qk, positions, cos, sin)),
            max_abs_err_vs_baseline=max_err((ours, ref)),
        )

    def store_kv(self, tokens: int) -> dict[str, Any]:
        qkv = self._qkv(tokens)
        k, v = qkv[:, HEADS : HEADS + KV_HEADS], qkv[:, HEADS + KV_HEADS :]
        pool = max(4 * tokens, 1 << 16)
        k_buffer = torch.zeros(pool, KV_HEADS, HEAD_DIM, dtype=self.dtype, device=self.device)
        v_buffer = torch.zeros_like(k_buffer)
        slots = self.randperm(pool)[:tokens]
        us = self.time(lambda: rope_kv.store_kv_(k_buffer, v_buffer, k, v, slots))
        ref_k, ref_v = torch.zeros_like(k_buffer), torch.zeros_like(v_buffer)
        reference.store_kv_(ref_k, ref_v, k, v, slots)
        err = max_err((k_buffer, ref_k), (v_buffer, ref_v))
        nbytes = 4 * tokens * KV_HEADS * HEAD_DIM * self.dtype.itemsize + tokens * 8
        return make_row(
            "store_kv_",
            f"{tokens} tokens x [{KV_HEADS}, {HEAD_DIM}]",
            us,
            nbytes,
            self.copy_gb_s,
            tokens=tokens,
            baseline="torch reference (index_put)",
            baseline_us=self.baseline(lambda: reference.store_kv_(k_buffer, v_buffer, k, v, slots)),
            max_abs_err_vs_baseline=err,
        )

    def bitmask(self, rows: int) -> dict[str, Any]:
        width = triton.cdiv(VOCAB, 32)
        allowed = torch.rand(rows, width * 32, generator=self.gen, device=self.device) < ALLOWED_FRACTION
        allowed[:, VOCAB:] = False
        bits = (allowed.view(rows, width, 32).long() << torch.arange(32, device=self.device)).sum(-1)
        bitmask = torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32)
        logits = self.randn(rows, VOCAB, dtype=torch.float32)
        ours, ref = logits.clone(), logits.clone()
        fused_ops.apply_token_bitmask_(ours, bitmask)
        reference.apply_token_bitmask_(ref, bitmask)
        us = self.time(lambda: fused_ops.apply_token_bitmask_(logits, bitmask))
        written = int((~allowed[:, :VOCAB]).sum())
        nbytes = bitmask.numel() * 4 + rows * 8 + written * 4
        return make_row(
            "apply_token_bitmask_",
            f"[{rows}, {VOCAB}] float32",
            us,
            nbytes,
            self.copy_gb_s,
            rows=rows,
            allowed_fraction=ALLOWED_FRACTION,
            baseline="torch reference (unpack + masked_fill)",
            baseline_us=self.baseline(lambda: reference.apply_token_bitmask_(logits, bitmask)),
            max_abs_err_vs_baseline=max_err((ours, ref)),
        )

    def rows(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        batches, contexts = self.grid["decode"]
        for batch in batches:
            for context in contexts:
                out.append(self.decode(batch, context))
                _log(f"{out[-1]['kernel']} {out[-1]['shape']}: {out[-1]['time_us']} us")
                self.release()
        for batch, new, prefix in self.grid["extend"]:
            out.append(self.extend(batch, new, prefix))
            self.release()
        for tokens in self.grid["tokens"]:
            out += [self.rms_norm(tokens), self.silu_and_mul(tokens), self.rope(tokens), self.store_kv(tokens)]
            self.release()
        out.append(self.bitmask(self.grid["bitmask_rows"]))
        return out

    def release(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _log(message: str) -> None:
    print(f"[bench kernels] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("splits", "programs_per_sm", "max_splits", "block_n", "warmup_ms", "rep_ms"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            print(f"{PROG}: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    interpret = attention_block.interpreted()
    if not interpret and not torch.cuda.is_available():
        print(
            f"{PROG}: needs a CUDA GPU (torch.cuda.is_available() is False). For a smoke run of the script "
            "on CPU in Triton's interpreter (meaningless timings), set TRITON_INTERPRET=1.",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu") if interpret else torch.device("cuda", torch.cuda.current_device())
    sizes = args.sizes if args.sizes != "auto" else ("small" if interpret else "full")
    if interpret and sizes == "full":
        print(f"{PROG}: --sizes full needs a CUDA GPU (the interpreter would take hours)", file=sys.stderr)
        return 2
    grid = SMALL_GRID if sizes == "small" else FULL_GRID
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    if interpret:
        print(
            "TRITON_INTERPRET=1: the kernels run in Triton's CPU interpreter on a tiny grid; these timings "
            "are MEANINGLESS (smoke test of the script only)."
        )
    torch.manual_seed(args.seed)
    copy_gb_s = copy_bandwidth(device, grid["copy_bytes"])
    print(
        f"device: {name}; copy bandwidth ({grid['copy_bytes'] >> 20} MiB device-to-device copy_, "
        f"read + written, best of 10): {copy_gb_s:.0f} GB/s"
    )
    bench = Bench(args, device, grid, copy_gb_s)
    with torch.inference_mode():
        rows = bench.rows()
    print(format_rows(rows))
    print(LEGEND)
    target = next(
        (r for r in rows if r["kernel"] == "decode_attention" and (r["batch"], r["context"]) == TARGET_SHAPE), None
    )
    headline = None if target is None else target["pct_of_copy"]
    if headline is not None:
        verdict = "meets" if headline >= TARGET_PCT else "BELOW"
        print(
            f"decode attention {TARGET_SHAPE[0]} x {TARGET_SHAPE[1]}: {headline:.1f} % of copy bandwidth "
            f"({verdict} the {TARGET_PCT:.0f} % target)"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "kernels",
                    "mode": "interpreter" if interpret else "cuda",
                    "timings_meaningful": not interpret,
                    "sizes": sizes,
                    "device": name,
                    "sms": bench.sms if device.type == "cuda" else None,
                    "torch": torch.__version__,
                    "triton": triton.__version__,
                    "dtype": str(bench.dtype).split(".")[-1],
                    "attention_shape": {"heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM},
                    "copy_bandwidth_gb_s": round(copy_gb_s, 1),
                    "copy_bytes_per_rep": 2 * grid["copy_bytes"],
                    "decode_attention_64x2048_pct_of_copy": headline,
                    "target_pct_of_copy": TARGET_PCT,
                    "programs_per_sm": args.programs_per_sm,
                    "max_splits": args.max_splits,
                    "block_n": args.block_n,
                    "timed": "cuda graph replay"
                    if bench.time.cuda_graph
                    else ("do_bench" if not interpret else "wall clock"),
                    "cuda_graph_failures": bench.time.graph_failures,
                    "rows": rows,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
