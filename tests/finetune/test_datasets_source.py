"""`--data` as a Hugging Face `datasets` dataset: a `save_to_disk` folder (Dataset and
DatasetDict), a Parquet file and a data folder `load_dataset` reads give the very examples the
same records give as JSONL; bad rows are named by index; a hub name offline and a missing
`datasets` package are clear errors."""

from __future__ import annotations

import sys

import pytest

from llama3.finetune import DataError, Renderer, read_examples
from llama3.tokenizer import chat_formatter

from .helpers import chat_records, load_tiny, write_jsonl

datasets = pytest.importorskip("datasets")  # the test extra installs it


def _records() -> list[dict]:
    return [
        *chat_records(3),
        {"prompt": "Two and two?", "completion": "Four."},
        {"text": "Plain text to learn."},
    ]


@pytest.fixture(scope="module")
def renderer(tiny):
    lm = load_tiny(tiny.path("3.1", "hf"))
    return Renderer(lm.tokenizer, chat_formatter(lm.tokenizer))


def _dataset(records: list[dict]):
    """Columns over all the records' fields: Arrow gives a row's absent fields as None."""
    keys = dict.fromkeys(k for r in records for k in r)
    return datasets.Dataset.from_dict({k: [r.get(k) for r in records] for k in keys})


def _as_tuples(examples):
    return [(e.ids, e.labels) for e in examples]


def test_dataset_forms_give_the_jsonl_examples(renderer, tmp_path):
    want = _as_tuples(read_examples(write_jsonl(tmp_path / "d.jsonl", _records()), renderer, 512))
    chats = [r for r in _records() if "messages" in r]
    saved = tmp_path / "saved"
    _dataset(_records()).save_to_disk(str(saved))
    assert _as_tuples(read_examples(saved, renderer, 512)) == want

    splits = tmp_path / "splits"
    datasets.DatasetDict(
        train=datasets.Dataset.from_list(chats), test=datasets.Dataset.from_list(chats[:1])
    ).save_to_disk(str(splits))
    assert _as_tuples(read_examples(splits, renderer, 512)) == want[:3]  # "train" by default
    assert _as_tuples(read_examples(f"{splits}:test", renderer, 512)) == want[:1]
    with pytest.raises(DataError, match="has splits train, test, not 'dev'"):
        read_examples(f"{splits}:dev", renderer, 512)

    parquet = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(chats).to_parquet(str(parquet))
    assert _as_tuples(read_examples(parquet, renderer, 512)) == want[:3]
    folder = tmp_path / "folder"
    folder.mkdir()
    datasets.Dataset.from_list(chats).to_parquet(str(folder / "train-00000.parquet"))
    assert _as_tuples(read_examples(folder, renderer, 512)) == want[:3]


def test_bad_rows_are_named_by_index(renderer, tmp_path):
    rows = [
        *chat_records(2),
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"prompt": "p", "completion": ""},
    ]
    saved = tmp_path / "bad"
    _dataset(rows).save_to_disk(str(saved))
    with pytest.raises(DataError) as e:
        read_examples(saved, renderer, 512)
    msg = e.value.message
    assert "2 bad row(s)" in msg and "row 2: no assistant message" in msg
    assert "row 3: 'completion' is empty" in msg and "row 0" not in msg


def test_hub_name_offline_and_missing_package_are_clear_errors(renderer, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="cannot load the dataset 'nobody-here/no-such-set'"):
        read_examples("nobody-here/no-such-set", renderer, 512)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(DataError) as e:
        read_examples("someone/some-set", renderer, 512)
    assert "pip install datasets" in e.value.hint
