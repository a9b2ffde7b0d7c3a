"""`llama3 download` (placeholder until implemented)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("not implemented yet")
    return 1
