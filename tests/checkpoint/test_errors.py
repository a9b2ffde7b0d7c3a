"""Every bad checkpoint raises a typed error whose message names the file, what was expected, and
what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llama3 import CheckpointError, ConfigError, Llama, UnsupportedFormatError


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst


def _load(path):
    return Llama.load(path, max_seq_len=64, max_batch_size=1)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory") as e:
        _load(tmp_path / "nope")
    assert e.value.hint


def test_unknown_directory(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(UnsupportedFormatError, match="not a checkpoint directory") as e:
        _load(tmp_path)
    assert "params.json" in e.value.hint and "config.json" in e.value.hint


def test_unknown_file(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 100)
    with pytest.raises(UnsupportedFormatError, match="weights.bin"):
        _load(f)


class TestMeta:
    def test_no_shards(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "meta"), tmp_path / "m")
        (d / "consolidated.00.pth").unlink()
        with pytest.raises(CheckpointError, match="no checkpoint files found") as e:
            _load(d)
        assert "consolidated.00.pth" in e.value.hint

    def test_truncated_shard(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "meta"), tmp_path / "m")
        f = d / "consolidated.00.pth"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        with pytest.raises(CheckpointError, match="consolidated.00.pth") as e:
            _load(d)
        assert "truncated or corrupt" in e.value.hint

    def test_shard_count_does_not_divide(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "meta2"), tmp_path / "m")
        shutil.copy(d / "consolidated.01.pth", d / "consolidated.02.pth")
        with pytest.raises(CheckpointError, match="3 checkpoint shards do not divide"):
            _load(d)

    def test_params_without_vocab_size(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "meta"), tmp_path / "m")
        params = json.loads((d / "params.json").read_text())
        del params["vocab_size"]
        (d / "params.json").write_text(json.dumps(params))
        with pytest.raises(ConfigError, match="no vocab_size") as e:
            _load(d)
        assert "128256" in e.value.hint

    def test_invalid_params_json(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "meta"), tmp_path / "m")
        (d / "params.json").write_text("{not json")
        with pytest.raises(ConfigError, match="params.json is not valid JSON"):
            _load(d)

    def test_shape_disagrees_with_config(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "meta"), tmp_path / "m")
        params = json.loads((d / "params.json").read_text())
        params["multiple_of"] = 64  # hidden size 256 instead of 224
        (d / "params.json").write_text(json.dumps(params))
        with pytest.raises(
            CheckpointError,
            match=r"feed_forward\.w1\.weight has shape \(224, 64\) but the config expects \(256, 64\)",
        ):
            _load(d)

    def test_layer_count_disagrees(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "meta"), tmp_path / "m")
        params = json.loads((d / "params.json").read_text())
        params["n_layers"] = 3
        (d / "params.json").write_text(json.dumps(params))
        with pytest.raises(CheckpointError, match="tensor.*missing.*layers.2"):
            _load(d)

    def test_vocab_size_differs_from_tokenizer(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "meta"), tmp_path / "m")
        params = json.loads((d / "params.json").read_text())
        params["vocab_size"] = 130000
        (d / "params.json").write_text(json.dumps(params))
        with pytest.raises(
            ConfigError, match="tokenizer has 128256 tokens but the model's vocab_size is 130000"
        ):
            _load(d)

    def test_indivisible_heads(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "meta"), tmp_path / "m")
        params = json.loads((d / "params.json").read_text())
        params["n_kv_heads"] = 3
        (d / "params.json").write_text(json.dumps(params))
        with pytest.raises(ConfigError, match="n_heads 4 is not a multiple of n_kv_heads 3"):
            _load(d)


class TestHF:
    def test_truncated_safetensors(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "hf"), tmp_path / "h")
        f = d / "model.safetensors"
        f.write_bytes(f.read_bytes()[:1000])
        with pytest.raises(CheckpointError, match="model.safetensors") as e:
            _load(d)
        assert "truncated or corrupt" in e.value.hint

    def test_garbage_safetensors_header(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "hf"), tmp_path / "h")
        (d / "model.safetensors").write_bytes(b"\xff" * 64)
        with pytest.raises(CheckpointError, match="cannot read .*model.safetensors"):
            _load(d)

    def test_index_lists_missing_shard(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "hf"), tmp_path / "h")
        (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
        index = {
            "weight_map": {
                "model.norm.weight": "model-00001-of-00002.safetensors",
                "lm_head.weight": "model-00002-of-00002.safetensors",
            }
        }
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(
            CheckpointError, match="model-00002-of-00002.safetensors but the file is missing"
        ):
            _load(d)

    def test_unknown_architecture(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "hf"), tmp_path / "h")
        cfg = json.loads((d / "config.json").read_text())
        cfg["model_type"], cfg["architectures"] = "gpt2", ["GPT2LMHeadModel"]
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ConfigError, match="'gpt2' model") as e:
            _load(d)
        assert "LlamaForCausalLM" in e.value.hint

    def test_unsupported_rope_scaling(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "hf"), tmp_path / "h")
        cfg = json.loads((d / "config.json").read_text())
        cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ConfigError, match="rope_scaling type 'yarn' is not supported"):
            _load(d)

    def test_hidden_size_disagrees(self, tiny, tmp_path):
        d = _copy(tiny.path("3.0", "hf"), tmp_path / "h")
        cfg = json.loads((d / "config.json").read_text())
        cfg["intermediate_size"] = 200
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(
            CheckpointError,
            match=r"model.safetensors:model.layers.0.mlp.*has shape .* but the config expects",
        ):
            _load(d)


class TestGGUF:
    def test_truncated_file(self, tiny, tmp_path):
        f = _copy(tiny.path("3.0", "gguf"), tmp_path / "m.gguf")
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
        with pytest.raises(CheckpointError, match="m.gguf") as e:
            _load(f)
        assert "truncated or corrupt" in e.value.hint

    def test_not_gguf(self, tmp_path):
        f = tmp_path / "x.gguf"
        f.write_bytes(b"NOPE" + b"\0" * 100)
        with pytest.raises(CheckpointError, match="does not start with the GGUF magic"):
            _load(f)

    def test_unknown_architecture(self, tmp_path):
        import gguf

        f = tmp_path / "qwen.gguf"
        w = gguf.GGUFWriter(str(f), "qwen2")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with pytest.raises(ConfigError, match="holds a 'qwen2' model"):
            _load(f)
