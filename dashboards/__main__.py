"""python -m dashboards: write dashboards/generated/*.json from the settings (--config FILE)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dashboards.boards import BOARDS
from observer.config import load_settings

GENERATED = Path(__file__).parent / "generated"


def render(settings) -> dict[str, str]:
    return {
        name: json.dumps(build(settings).build(), indent=2, sort_keys=True) + "\n"
        for name, build in BOARDS.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", help="observer.yaml with custom thresholds")
    ap.add_argument("--out", default=str(GENERATED))
    args = ap.parse_args()
    settings = load_settings(args.config, environ={}) if args.config else load_settings(environ={})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render(settings).items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
