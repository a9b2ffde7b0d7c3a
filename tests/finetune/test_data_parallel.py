"""Data-parallel fine-tuning: a real 2-rank `torchrun -m llama3 finetune` (gloo, tiny model)
ends with the adapter of one process on the same global batches (up to float reduction order),
and a run resumed under torchrun from a checkpoint its own ranks wrote ends bit-identical to the
uninterrupted one. The oracle is the single-process trainer, itself held to PEFT elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llama3.cli import main
from llama3.errors import InvalidRequestError
from llama3.finetune.distributed import DataParallel

from .helpers import chat_records, write_jsonl

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]


def _args(model, data, evals, out) -> list[str]:
    # 11 examples in micro-batches of 4, 4, 3 and steps of 2 then 1 micro-batch: uneven shares.
    # A small lr: Adam turns reduction-order noise on near-zero gradient entries into updates
    # of up to about lr (at 1e-2 a couple of entries in thousands moved by 9e-5)
    return [
        "finetune", "--model", str(model), "--data", str(data), "--eval", str(evals),
        "--out", str(out), "--max-steps", "4", "--batch-size", "4", "--grad-accum", "2",
        "--lr", "1e-3", "--lora-dropout", "0", "--target", "q,v,down", "--seed", "3",
        "--save-every", "2", "--eval-every", "2",
    ]  # fmt: skip


def _torchrun(args: list[str], world: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [*TORCHRUN, str(world), "-m", "llama3", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_equal_one_process_and_resume_under_torchrun(tiny, tmp_path):
    model = tiny.path("3.1", "hf")
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(11))
    evals = write_jsonl(tmp_path / "eval.jsonl", chat_records(3))
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(_args(model, data, evals, single)) == 0
    run = _torchrun(_args(model, data, evals, ddp))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("step 4/4 loss") == 1  # rank 0 alone reports
    assert "on 2 data-parallel ranks" in run.stderr

    a = load_file(single / "adapter_model.safetensors")
    b = load_file(ddp / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(float(b[k].abs().max()) > 0 for k in b if "lora_B" in k)  # it trained
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-5, diff
    ms, md = _metrics(single), _metrics(ddp)
    assert [m["step"] for m in md] == [1, 2, 3, 4]
    assert [m["tokens"] for m in md] == [m["tokens"] for m in ms]
    for key in ("loss", "eval_loss"):
        got = [m.get(key, 0.0) for m in md]
        assert got == pytest.approx([m.get(key, 0.0) for m in ms], abs=1e-5), key

    # resume under torchrun from the checkpoint the ranks wrote at step 2
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(ddp / "checkpoint-000002", resumed / "checkpoint-000002")
    run = _torchrun([*_args(model, data, evals, resumed), "--resume"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resumed at step 2" in run.stderr
    c = load_file(resumed / "adapter_model.safetensors")
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert [m["step"] for m in _metrics(resumed)] == [3, 4]


def test_a_batch_that_cannot_be_split_is_refused():
    DataParallel(rank=0, world=2).check_batch(4, None)
    DataParallel(rank=0, world=2).check_batch(3, 512)  # token budgets split by rows
    with pytest.raises(InvalidRequestError, match="--batch-size 3 cannot be split across 2"):
        DataParallel(rank=1, world=2).check_batch(3, None)
