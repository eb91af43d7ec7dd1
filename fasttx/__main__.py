"""``python -m fasttx``: see fasttx.cli."""

from .cli import main

if __name__ == "__main__":
    main()
