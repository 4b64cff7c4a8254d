"""python -m digitlab.play: the playground on this machine (make play)."""

from __future__ import annotations

import argparse
import os
import socket


def port_number(text: str) -> int:
    """A TCP port, 1–65535 (argparse names the option when it is not)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def refuse_taken_port(host: str, port: int) -> None:
    """Stop in one line, before any model loads, when another program holds host:port."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(
                f"digitlab: error: {host}:{port} cannot be served ({exc.strerror}): "
                f"choose another port (make play PLAY_PORT={port + 1}, or --port)"
            ) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m digitlab.play",
        description="The playground: draw a digit, ask the generator for one.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="127.0.0.1: this machine only (default)"
    )
    parser.add_argument(
        "--port", type=port_number, default=os.environ.get("PLAY_PORT", "8000"), help="8000"
    )
    args = parser.parse_args(argv)
    refuse_taken_port(args.host, args.port)
    import uvicorn

    from digitlab.play.api import create_app

    app = create_app()
    print(f"digitlab playground: http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
