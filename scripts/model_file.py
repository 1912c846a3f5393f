"""Print the local path of a model card's ONNX file (pulling it first if it is missing).

For the Makefile, whose server targets need the cached path of a pulled model, e.g.
``.venv/bin/python scripts/model_file.py pp-ocrv4-det``. Exits 1 with the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import ConfigError, ModelError
from pipeline.modelcard import load_card
from pipeline.modelstore import model_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="a model card's name (models/<name>.yaml) or path")
    args = parser.parse_args(argv)
    try:
        print(model_path(load_card(args.name)))
    except (ConfigError, ModelError) as exc:
        print(f"model_file.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
