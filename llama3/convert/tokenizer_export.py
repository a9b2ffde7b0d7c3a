"""The source's tokenizer in each output format's own form.

The tokenizer comes from the project's loader (`load_tokenizer_for`), which settles the vocabulary,
special tokens, BOS/EOS, stop set and chat template for any checkpoint. From it:

- Meta: `tokenizer.model` (tiktoken ranks), copied, or rebuilt from a Llama 3 BPE vocabulary;
- Hugging Face: `tokenizer.json` (copied; from tiktoken through transformers' TikTokenConverter;
  from a GGUF, the vocabulary the loader rebuilt) + `tokenizer_config.json` with the chat template;
- GGUF: llama.cpp's `tokenizer.ggml.*` keys (gpt2 BPE tokens, types, merges, pre-tokenizer).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import LoadedCheckpoint
from ..errors import InvalidRequestError, TokenizerError
from ..tokenizer.base import BaseTokenizer
from ..tokenizer.hf import HFTokenizer, byte_level_alphabet, is_llama3_vocab

log = logging.getLogger(__name__)

#: Meta's chat layout (`ChatFormat`) as a Jinja template, for sources that ship no template: a
#: header per message, the content stripped, `<|eot_id|>`, then an open assistant header.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


@dataclass
class TokenizerExport:
    ckpt: LoadedCheckpoint
    tok: BaseTokenizer | None
    _json: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, ckpt: LoadedCheckpoint) -> TokenizerExport:
        from ..loader import load_tokenizer_for

        try:
            tok = load_tokenizer_for(ckpt)
        except TokenizerError as e:
            log.warning("warning: %s; the output will have no tokenizer", e.message)
            tok = None
        return cls(ckpt, tok)

    # ---- what every format needs -----------------------------------------------------------------
    @property
    def kind(self) -> str:
        """'tiktoken', 'hf', 'gguf' or 'none': where the vocabulary comes from."""
        from ..tokenizer.gguf_vocab import GGUFTokenizer
        from ..tokenizer.tiktoken_bpe import Tokenizer

        if self.tok is None:
            return "none"
        if isinstance(self.tok, GGUFTokenizer):
            return "gguf"
        if isinstance(self.tok, Tokenizer):
            return "tiktoken"
        return "hf"

    @property
    def llama3(self) -> bool:
        return self.tok is not None and is_llama3_vocab(self.tok.special_tokens)

    @property
    def chat_template(self) -> str | None:
        if self.tok is None:
            return None
        if self.tok.chat_template:
            return self.tok.chat_template
        return LLAMA3_CHAT_TEMPLATE if self.llama3 else None

    @property
    def stop_ids(self) -> list[int]:
        """Every id that ends a generation (eos, eot, eom ...), for generation_config.json."""
        return self.tok.stop_tokens if self.tok is not None else []

    def special_id(self, text: str) -> int | None:
        return self.tok.special_tokens.get(text) if self.tok is not None else None

    def text_of(self, token_id: int | None) -> str | None:
        if self.tok is None or token_id is None:
            return None
        for text, i in self.tok.special_tokens.items():
            if i == token_id:
                return text
        return None

    # ---- Hugging Face -------------------------------------------------------------------------------
    def tokenizer_json(self) -> str:
        """The vocabulary as a `tokenizers` JSON document."""
        if self._json is None:
            kind = self.kind
            if kind == "hf":
                self._json = (_hf_dir(self.tok) / "tokenizer.json").read_text("utf-8")
            elif kind == "gguf":  # the vocabulary llama.cpp's rules describe
                self._json = _gguf_to_json(
                    self.tok._tk.to_str(),
                    self.text_of(self.tok.bos_id) if self.tok.add_bos else None,
                )
            elif kind == "tiktoken":
                names = tuple(sorted(self.tok.special_tokens, key=self.tok.special_tokens.get))
                path = Path(self.tok.model_path)
                self._json = _tiktoken_to_json(str(path), path.stat().st_mtime_ns, names)
            else:
                raise TokenizerError("the source has no tokenizer", "pass a source with one")
        return self._json

    def write_hf(self, out: Path, max_position_embeddings: int) -> None:
        if self.tok is None:
            return
        if self.kind == "hf":  # the source's own files, byte for byte
            src = _hf_dir(self.tok)
            for name in HF_TOKENIZER_FILES:
                if (src / name).is_file():
                    shutil.copyfile(src / name, out / name)
            if (src / "tokenizer_config.json").is_file():
                return
        else:
            (out / "tokenizer.json").write_text(self.tokenizer_json(), "utf-8")
        config: dict[str, Any] = {
            "bos_token": self.text_of(self.tok.bos_id),
            "eos_token": self.text_of(self.tok.eos_id),
            "add_bos_token": bool(self.tok.add_bos),
            "clean_up_tokenization_spaces": True,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": max_position_embeddings,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")

    # ---- Meta -------------------------------------------------------------------------------------
    def write_tiktoken(self, out: Path) -> None:
        """`tokenizer.model`: Meta's tiktoken file (base tokens by rank; the specials follow)."""
        if self.tok is None:
            return
        if self.kind == "tiktoken":
            shutil.copyfile(self.tok.model_path, out)
            return
        if not self.llama3:
            raise InvalidRequestError(
                "Meta's format needs a Llama 3 tiktoken vocabulary; this tokenizer is not one",
                "convert to --to hf or --to gguf instead",
            )
        tj = json.loads(self.tokenizer_json())
        vocab: dict[str, int] = tj["model"]["vocab"]
        added = {t["id"] for t in tj.get("added_tokens", [])}
        n_base = min(added) if added else len(vocab)
        decode = {c: b for b, c in byte_level_alphabet().items()}
        by_id: dict[int, bytes] = {}
        for piece, i in vocab.items():
            if i < n_base:
                by_id[i] = bytes(decode[c] for c in piece)
        if sorted(by_id) != list(range(n_base)):
            raise TokenizerError(
                "the vocabulary's base tokens do not have the ids 0..N-1 Meta's ranks need",
                "convert to --to hf or --to gguf instead",
            )
        lines = (f"{base64.b64encode(by_id[i]).decode()} {i}\n" for i in range(n_base))
        out.write_text("".join(lines), "ascii")

    # ---- GGUF ----------------------------------------------------------------------------------------
    def write_gguf(self, writer: Any) -> None:
        """llama.cpp's tokenizer keys: the vocabulary lists, special ids and the chat template."""
        if self.tok is None:
            return
        md = self.ckpt.metadata if self.kind == "gguf" else {}
        if md:
            tokens = list(md["tokenizer.ggml.tokens"])
            types = list(md.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens))
            merges = list(md.get("tokenizer.ggml.merges") or [])
            model = md.get("tokenizer.ggml.model", "gpt2")
            pre = md.get("tokenizer.ggml.pre")
        else:
            tokens, types, merges = _gguf_lists(json.loads(self.tokenizer_json()))
            model, pre = "gpt2", None
            if self.llama3:
                pre = "llama-bpe"  # Meta's split pattern, as llama.cpp names it
            else:
                raise InvalidRequestError(
                    "llama.cpp needs a named pre-tokenizer and this vocabulary is not Llama 3's",
                    "convert Llama 3 models only, or start from a GGUF of this model",
                )
        vocab = self.ckpt.args.vocab_size
        if len(tokens) < vocab:  # padded embedding rows (as llama.cpp's converter names them)
            tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab)]
            types += [_UNUSED] * (vocab - len(types))
        writer.add_tokenizer_model(model)
        if pre:
            writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        if merges:
            writer.add_token_merges(merges)
        ids = {
            "bos": self.tok.bos_id,
            "eos": self.tok.eos_id,
            "eot": self.special_id("<|eot_id|>"),
            "eom": self.special_id("<|eom_id|>"),
        }
        for key in ("eot", "eom", "padding"):
            if md.get(f"tokenizer.ggml.{key}_token_id") is not None:
                ids[key] = md[f"tokenizer.ggml.{key}_token_id"]
        for key, value in ids.items():
            if value is not None:
                getattr(writer, f"add_{'pad' if key == 'padding' else key}_token_id")(int(value))
        writer.add_add_bos_token(bool(self.tok.add_bos))
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def _hf_dir(tok: BaseTokenizer) -> Path:
    assert isinstance(tok, HFTokenizer)
    return Path(tok.name).parent


@functools.lru_cache(maxsize=4)
def _tiktoken_to_json(path: str, mtime_ns: int, special_names: tuple[str, ...]) -> str:
    """tokenizer.json for a tiktoken file (transformers' converter; ~6 s for 128K tokens, so
    cached per file). BOS is prepended by a TemplateProcessing, as Meta's HF repos do."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from ..tokenizer.tiktoken_bpe import PAT_STR

    tk = TikTokenConverter(
        vocab_file=path, pattern=PAT_STR, extra_special_tokens=list(special_names)
    ).converted()
    _prepend_bos(tk, special_names[0])
    return tk.to_str()


def _gguf_to_json(doc: str, bos: str | None) -> str:
    """The GGUF vocabulary's tokenizer.json; with `bos`, it prepends it as the GGUF file says
    (`tokenizer.ggml.add_bos_token`), since transformers takes that from the post-processor."""
    if bos is None:
        return doc
    from tokenizers import Tokenizer

    tk = Tokenizer.from_str(doc)
    _prepend_bos(tk, bos)
    return tk.to_str()


def _prepend_bos(tk: Any, bos: str) -> None:
    """Meta's HF repos' post-processor: byte-level offsets, then `bos` before each sequence."""
    from tokenizers import processors

    bos_id = tk.token_to_id(bos)
    tk.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)]
            ),
        ]
    )


def _gguf_lists(tj: dict[str, Any]) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, llama.cpp token types, "left right" merges) of a BPE tokenizer.json."""
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise InvalidRequestError(
            f"the tokenizer is {model.get('type')!r}, not byte-level BPE",
            "only Llama 3 (BPE) vocabularies are converted to GGUF",
        )
    pieces: dict[int, tuple[str, int]] = {i: (p, _NORMAL) for p, i in model["vocab"].items()}
    for t in tj.get("added_tokens", []):
        pieces[t["id"]] = (t["content"], _CONTROL if t.get("special") else _USER_DEFINED)
    n = max(pieces) + 1
    tokens = [pieces.get(i, (f"[PAD{i}]", _UNUSED))[0] for i in range(n)]
    types = [pieces.get(i, ("", _UNUSED))[1] for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges
