"""``python -m chains.hedera.devnet``: run the devnet in the foreground, print describe().

Stops on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading

from .network import HederaDevnet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chains.hedera.devnet", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=50211, help="0 picks a free port (default 50211)")
    parser.add_argument("--mirror-port", type=int, default=5551, help="0 picks a free port (default 5551)")
    parser.add_argument("--mirror-lag", type=float, default=0.0, help="mirror ingestion lag in seconds")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with HederaDevnet(host=args.host, grpc_port=args.grpc_port, mirror_port=args.mirror_port,
                      mirror_lag=args.mirror_lag) as net:
        print(json.dumps(net.describe(), indent=2), flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
