"""Run by `vllm_peer.py` with the peer's Python (a virtual environment with vLLM, no loomlm): one offline
`LLM.generate` over the prompts it reads as JSON on stdin, greedy, EOS ignored, timed after a warm-up.
Prints one line `LOOMLM-PEER-RESULT {json}` (wall time, output ids, vLLM's version). Imports nothing of
loomlm, so it runs in any environment that has vLLM."""

import json
import sys
import time


def main() -> int:
    spec = json.load(sys.stdin)
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=spec["model_dir"], dtype=spec["dtype"], max_model_len=spec["max_model_len"], seed=0)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in spec["prompts"]]
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), use_tqdm=False)
    params = SamplingParams(max_tokens=spec["output_len"], temperature=0, ignore_eos=True)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    result = {"wall_s": wall, "output_ids": [list(o.outputs[0].token_ids) for o in outs], "version": vllm.__version__}
    print("LOOMLM-PEER-RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
