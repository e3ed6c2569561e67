"""The frozen app's entry point (PyInstaller runs this file; it is not part of the package).

The same as the `smolvlm-desktop` console script: no arguments open the window, subcommands
work headless. freeze_support() first, because a frozen program that uses multiprocessing
(ONNX Runtime and Pillow do not, but a dependency might one day) would otherwise start the
whole app again in every child process on Windows and macOS.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from smolvlm_desktop.cli import main

    sys.exit(main())
