"""``python -m workbench scan|merge ...``: see `workbench.cli`."""

from .cli import main

if __name__ == "__main__":
    main()
