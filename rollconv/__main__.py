"""``python -m rollconv info``: print the facts of this build.
``python -m rollconv bench [--quick] ...``: time rollconv against PyTorch on this machine
(``python -m rollconv bench --help`` lists the options)."""
import sys

USAGE = "usage: python -m rollconv info | python -m rollconv bench [--quick] [--help]"


def main(argv):
    command, rest = (argv[1], argv[2:]) if len(argv) > 1 else ("info", [])
    if command == "info" and not rest:
        from ._info import info

        info()
        return 0
    if command == "bench":
        from . import benchmark

        benchmark.main(rest)
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
