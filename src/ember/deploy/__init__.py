"""`ember deploy`: deployment as data. A static kustomize base (deploy/k8s/base, YAML an
operator edits) and the one patch `ember deploy k8s` measures and writes.

- `report`: the startup measurement (an `ember bench startup` report, or one made here by
  calling `bench.startup`), reduced to its slowest run;
- `plan`: the numbers (probe windows, memory, grace period) and how each was derived;
- `patch`: the patch and the overlay, written as YAML by PyYAML;
- `kustomize`: the overlay rendered by kustomize's rules, for printing without kubectl;
- `cli`: argument parsing.

PyYAML and psutil (the `deploy` extra) are imported only by the functions that need them.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """`ember deploy ...` (see `ember.deploy.cli`)."""
    from ember.deploy.cli import main as cli_main

    return cli_main(argv)
