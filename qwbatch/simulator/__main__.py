"""``python -m qwbatch.simulator --port P``: serve the simulator until Ctrl-C.

``qwbatch simulator`` is the same command: it hands its arguments to :func:`main`.

Common knobs have flags; any other knob is ``--set NAME=VALUE`` (VALUE parsed as JSON when it
can be, e.g. ``--set error_5xx_rate=0.1 --set rps_by_model='{"qwen-image": 5}'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from qwbatch.simulator.config import SimulatorConfig
from qwbatch.simulator.server import DEFAULT_PORT, serve

DESCRIPTION = """Serve the DashScope-compatible simulator on loopback until Ctrl-C.

Common knobs have flags; any other SimulatorConfig knob is --set NAME=VALUE (VALUE parsed as
JSON when it can be), e.g. faults: --set error_5xx_rate=0.1 --set drop_connection_rate=0.05,
or rates: --set rps_by_model='{"qwen-image": 5}'."""


def build_parser(prog: str = "python -m qwbatch.simulator") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--api-key", help="the only accepted key (default: any key)")
    parser.add_argument("--seed", type=int, help="seed of the fault dice")
    parser.add_argument(
        "--fast", action="store_true", default=None, help="text-free cached images (benchmarks)"
    )
    parser.add_argument("--latency", type=float, dest="latency_s", help="seconds per call")
    parser.add_argument("--rps", type=float, help="override every model's requests per second")
    parser.add_argument("--no-rate-limit", action="store_false", dest="rate_limit", default=None)
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="any SimulatorConfig knob"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    knobs: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("api_key", "seed", "fast", "latency_s", "rps", "rate_limit")
        if getattr(args, name) is not None
    }
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
        try:
            knobs[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            knobs[name.strip()] = value
    return SimulatorConfig.model_validate(knobs)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    parser = build_parser(prog) if prog else build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, ValidationError) as exc:
        parser.error(str(exc))
    print(f"DashScope simulator: http://{args.host}:{args.port}/api/v1", file=sys.stderr)
    serve(config, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
