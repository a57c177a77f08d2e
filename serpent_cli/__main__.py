"""``python -m serpent_cli`` (and ``torchrun -m serpent_cli``) runs the same app as ``serpent``."""

from serpent_cli.cli import main

if __name__ == "__main__":
    main()
