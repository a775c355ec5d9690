"""``python -m diffdet``: the same as the ``diffdet`` command."""

from diffdet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
