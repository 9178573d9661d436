"""The ``terravl`` command line: a thin front end over the library's functions."""
