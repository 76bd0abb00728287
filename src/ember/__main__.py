"""`python -m ember` and the `ember` command: for `serve`, the port opens and answers probes
before the heavy imports (ember.early)."""

import sys


def main() -> int:
    from ember import early

    early.listen_from_argv(sys.argv[1:])
    from ember.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
