"""Placeholder: filled in by the aime_worker work (issue 19)."""

from __future__ import annotations

import argparse

from ..errors import Llama3Error


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise Llama3Error("not implemented yet")
