"""Workflows behind the console scripts: parse arguments, call the library, report."""
