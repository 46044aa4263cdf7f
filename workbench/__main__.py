"""``python -m workbench scan|merge|train-transcoders ...``: see `workbench.cli`."""

from .cli import main

if __name__ == "__main__":
    main()
