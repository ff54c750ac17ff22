"""``python -m lrcert``: the same as the ``lrcert`` command."""

from .cli import main

if __name__ == "__main__":
    main()
