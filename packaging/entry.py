"""The frozen application's entry point (PyInstaller): the same launcher as the ``quant-studio`` script."""
import sys

from app.launcher import main

if __name__ == "__main__":
    sys.exit(main())
