"""``python -m fast3d_cli`` (used by ``accelerate launch -m fast3d_cli``)."""

from fast3d_cli.cli.app import main

if __name__ == "__main__":
    main()
