"""optuna-dashboard for the chart, with its storage URL read from a file (the mounted Secret named by
OPTUNA_STORAGE_FILE) and handed to optuna_dashboard.run_server in-process: `optuna-dashboard URL` would put
the URL, password included, on the command line, which every user of the node can read (`ps`)."""

import argparse
import os
import sys

from optuna_dashboard import run_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    path = os.environ.get("OPTUNA_STORAGE_FILE", "")
    try:
        with open(path, encoding="utf-8") as f:
            url = f.read().strip()
    except OSError as e:
        print(
            f"dashboard: cannot read the storage URL from OPTUNA_STORAGE_FILE={path!r}: {e}", file=sys.stderr
        )
        return 2
    run_server(url, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
