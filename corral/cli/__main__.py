"""``python -m corral.cli``: the same as the ``corral`` console script."""

from corral.cli.app import main

if __name__ == "__main__":
    main()
