"""The command line: a thin layer over the public Python API; no logic of its own."""
