"""`python -m loomlm.runtime.distributed.follower RANK PORT CONFIG_JSON`: tensor-parallel ranks 1..N-1.

Started by rank 0's `TensorParallelDriver`. The loop: receive each step from rank 0, run the same
forward on this rank's share of the model (its collectives meet rank 0's), until rank 0 sends the stop
(an empty message). A failure is written into the group's store as this rank's report (`error/RANK`); the process
then exits, which closes its sockets and so fails rank 0's pending collective instead of leaving it
waiting."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback


def run_follower(rank: int, port: int, settings: dict) -> int:
    from loomlm.runtime.config import EngineConfig
    from loomlm.runtime.distributed.batch_wire import decode_forward
    from loomlm.runtime.model_runner import ModelRunner

    runner = None
    try:
        runner = ModelRunner(EngineConfig(**settings), tp_rank=rank, tp_port=port)
        group = runner.tp_group
        while True:
            message = group.broadcast_ints(idle=True)  # however long the engine idles
            if not message.numel():  # the stop message
                break
            runner.forward_local(decode_forward(message, runner.req_pool))
    except BaseException as exc:  # reported to rank 0, then this process ends
        logging.getLogger(__name__).error("rank %d failed:\n%s", rank, traceback.format_exc())
        group = None if runner is None else runner.tp_group
        if group is not None:
            try:
                group.store.set(f"error/{rank}", f"{type(exc).__name__}: {exc}")
            except RuntimeError:  # rank 0 is gone too
                pass
        sys.stderr.flush()
        os._exit(1)  # no clean-up that could wait on a peer
    runner.tp_group.close()
    return 0


def main() -> int:
    rank, port, settings = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s tp{rank} %(name)s %(message)s")
    return run_follower(rank, port, settings)


if __name__ == "__main__":
    sys.exit(main())
