"""Tensor parallelism inside one engine: the split of a model across ranks (`plan.py`), the process
group the ranks talk over (`group.py`), the slicing of a loaded model (`sharding.py`), each step's batch
as it travels from rank 0 to the others (`batch_wire.py`), and the two sides of the lockstep: rank 0's
`TensorParallelDriver` (`driver.py`) and the other ranks' loop (`follower.py`)."""
