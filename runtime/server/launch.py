"""`loomlm serve` / `python -m loomlm.runtime.server`: load the engine, then serve it with uvicorn.

Every engine argument comes from `EngineConfig`, every server argument from `ServerConfig` and the
data-parallel ones from `DataParallelConfig` (flags generated from their fields); all are checked before
the model loads. With `--dp-size N` (N > 1) the process is a launcher instead (`dp_launcher.py`): N
such servers behind the SGLang router.
"""

from __future__ import annotations

import argparse
import logging
import sys

from loomlm.runtime.arg_parser import (
    add_config_arguments,
    add_engine_arguments,
    config_from_args,
    engine_config_from_args,
)
from loomlm.runtime.server import dp_launcher
from loomlm.runtime.server.config import HELP, ServerConfig

logger = logging.getLogger("loomlm.server")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ServerConfig, HELP)
    add_engine_arguments(parser)
    add_config_arguments(parser, dp_launcher.DataParallelConfig, dp_launcher.HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loomlm serve", description="serve a model over HTTP")
    add_server_arguments(parser)
    return parser


def serve(args: argparse.Namespace) -> int:
    try:
        server_config = config_from_args(ServerConfig, args)
        engine_config = engine_config_from_args(args)
        dp_config = config_from_args(dp_launcher.DataParallelConfig, args)
    except ValueError as exc:
        print(f"loomlm serve: {exc}", file=sys.stderr)
        return 2
    if dp_config.dp_size > 1:
        return dp_launcher.launch_data_parallel(dp_config, engine_config, server_config)
    import uvicorn

    from loomlm.runtime.engine import Engine
    from loomlm.runtime.server.app import build_app
    from loomlm.runtime.server.lifecycle import GracefulServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        engine = Engine(**vars(engine_config))
    except ValueError as exc:
        print(f"loomlm serve: {exc}", file=sys.stderr)
        return 2
    try:
        app = build_app(engine, server_config)
        state = app.state.loomlm
        logger.info("serving %s", state.model_name)
        config = uvicorn.Config(app, host=server_config.host, port=server_config.port, log_level="warning")
        GracefulServer(config, state).run()
    finally:
        engine.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    return serve(build_parser().parse_args(argv))
