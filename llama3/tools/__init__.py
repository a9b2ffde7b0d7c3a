"""Tool calling: tool definitions, prompts with tools, and parsing the model's calls.

spec.py validates OpenAI `tools`; prompt.py renders a dialog with them (the model's Jinja template
or Meta's Llama 3.1 layout); parse.py and stream.py turn an answer into content + calls;
choice.py turns `tool_choice` into a constraint the sampler enforces.
"""

from .parse import ParsedAnswer, parse_answer
from .spec import BUILTIN_TOOLS, Tool, ToolCall, parse_tools

__all__ = ["BUILTIN_TOOLS", "ParsedAnswer", "Tool", "ToolCall", "parse_answer", "parse_tools"]
