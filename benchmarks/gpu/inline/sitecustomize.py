"""Loads benchmarks/gpu/inline_small.py at interpreter start (an experiment; see there)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import inline_small  # noqa: F401
