"""loomlm.kernels: Triton kernels, each beside a pure-torch reference. Arrive with the CUDA-path issue."""
