"""loomlm.bench: the benchmarks, one layer above all others (`python -m loomlm.bench <name>`).

`__main__.py` maps each name to its module: `offline.py` (with `offline_decode.py`, `hf_baseline.py`),
`prefix.py`, `grammar.py` (with `grammar_adapters.py`, `grammar_e2e.py`, `grammar_workload.py`),
`programs.py` (with `program_workloads.py`, `naive_hf.py`) and `kernels.py` (with `kernel_timing.py`);
`common.py` and `report.py` are shared. They may import any layer (runtime, lang, grammars, kernels);
no layer imports them. Results and how to read them: docs/benchmarks.md.
"""
