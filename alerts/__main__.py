"""python -m alerts: write alerts/generated/*.yml and alerts/tests/*.yml from the settings (--config FILE)."""

from __future__ import annotations

import argparse
from pathlib import Path

from alerts.rules import write
from observer.config import load_settings

ROOT = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", help="observer.yaml with custom thresholds (default: built-in defaults)")
    ap.add_argument("--out", default=str(ROOT), help="directory that receives generated/ and tests/")
    args = ap.parse_args()
    settings = load_settings(args.config, environ={}) if args.config else load_settings(environ={})
    for path in write(settings, Path(args.out)):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
