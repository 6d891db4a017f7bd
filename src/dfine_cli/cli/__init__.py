"""The ``dfine`` command line: argument parsing and rendering only; work is done by the library."""
