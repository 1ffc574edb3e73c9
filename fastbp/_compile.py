"""``python -m fastbp._compile``: compile the op kernels named on stdin into fastbp's kernel
cache, for a parent process's ``_config.compile_ops`` (which loads them from there)."""

import json
import sys

from fastbp import _config

if __name__ == "__main__":
    _config.compile_specs(json.load(sys.stdin))
