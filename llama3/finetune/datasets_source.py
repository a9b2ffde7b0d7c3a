"""Training rows from a Hugging Face `datasets` dataset (when that package is installed).

`--data` / `--eval` may name a folder written by `Dataset.save_to_disk` (or a `DatasetDict`'s),
a data file or folder `datasets.load_dataset` reads (Parquet, CSV, JSON, Arrow), or a dataset
on the Hugging Face hub (`owner/name`); `SPEC:SPLIT` picks a split. Rows carry the fields of the
JSONL records (`messages`, `prompt`+`completion` or `text`); Arrow gives absent fields as None,
so None-valued fields are dropped before the row is rendered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError

#: data files that are never JSONL: read through `datasets`
DATASET_SUFFIXES = (".parquet", ".arrow", ".csv", ".tsv")
_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".tsv": "csv"}


def is_dataset(spec: str) -> bool:
    """Whether `spec` is for `datasets` rather than a JSONL file."""
    p = Path(spec)
    if p.is_file():
        return p.suffix.lower() in DATASET_SUFFIXES
    return p.is_dir() or not p.suffix  # a folder, or a hub name (never a missing .jsonl)


def rows(spec: str, error: type[InvalidRequestError]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, record) for every row of the dataset `spec` (its chosen split)."""
    for i, row in enumerate(_load(spec, error)):
        yield i, {k: v for k, v in row.items() if v is not None}


def _load(spec: str, error: type[InvalidRequestError]):
    try:
        import datasets
    except ImportError:
        raise error(
            f"{spec} is not a JSONL file, and reading a Hugging Face dataset needs `datasets`",
            "pip install datasets (or pass a JSONL file)",
            "data",
        ) from None
    name, split = _split_spec(spec)
    p = Path(name)
    try:
        if p.is_dir() and any((p / f).is_file() for f in _SAVED):
            found = datasets.load_from_disk(str(p))
        elif p.is_file():
            builder = _BUILDERS[p.suffix.lower()]
            opts = {"delimiter": "\t"} if p.suffix.lower() == ".tsv" else {}
            found = datasets.load_dataset(builder, data_files=str(p), **opts)
        else:
            found = datasets.load_dataset(name)  # a data folder, or a hub dataset
    except (ConnectionError, OSError) as e:  # offline / unknown on the hub / unreadable
        raise error(
            f"cannot load the dataset {name!r}: {_first_line(e)}",
            "check the path or hub name; a hub dataset needs the network the first time "
            "(then it is cached; HF_HUB_OFFLINE=1 uses the cache only)",
            "data",
        ) from None
    except Exception as e:  # datasets' own errors: bad files, unknown formats, empty folders
        raise error(
            f"cannot load the dataset {name!r}: {_first_line(e)}",
            "pass a save_to_disk folder, Parquet/CSV/JSON files, or a hub dataset name",
            "data",
        ) from None
    return _choose_split(found, name, split, error)


#: files `save_to_disk` writes (a Dataset's, a DatasetDict's)
_SAVED = ("state.json", "dataset_dict.json")


def _split_spec(spec: str) -> tuple[str, str | None]:
    if Path(spec).exists() or ":" not in spec:
        return spec, None
    name, split = spec.rsplit(":", 1)
    return name, split or None


def _choose_split(found, name: str, split: str | None, error: type[InvalidRequestError]):
    if not hasattr(found, "keys"):  # a single Dataset
        if split is not None:
            raise error(f"{name} is one dataset without splits", f"pass {name} alone", "data")
        return found
    splits = list(found.keys())
    if split is None:
        split = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
    if split not in splits:
        raise error(
            f"{name} has splits {', '.join(splits)}"
            + (f", not {split!r}" if split else "; which one?"),
            f"pick one as {name}:{splits[0]}",
            "data",
        )
    return found[split]


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
