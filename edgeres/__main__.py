"""`python -m edgeres` is the `edgeres` command."""

from edgeres.cli import main

if __name__ == "__main__":
    main()
