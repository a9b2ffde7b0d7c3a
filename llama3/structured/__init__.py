"""Structured output: constraining generation to a JSON schema, a regular expression or a grammar."""

from .spec import GuidedDecoding

__all__ = ["GuidedDecoding"]
