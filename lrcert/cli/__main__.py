"""``python -m lrcert.cli``: the same as the ``lrcert`` command."""

from . import main

if __name__ == "__main__":
    main()
