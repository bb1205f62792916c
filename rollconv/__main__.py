"""``python -m rollconv info``: print the facts of this build."""
import sys

from ._info import info


def main(argv):
    if argv[1:] not in ([], ["info"]):
        print("usage: python -m rollconv info", file=sys.stderr)
        return 2
    info()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
