"""Operations: the AIME server dying and coming back mid-run, and stopping the worker cleanly.

These tests run their own server and worker (module-wide): they kill the server and stop the
worker, which the other test files' shared processes must not see.
"""

from __future__ import annotations

import signal
import time

import pytest
from aime_harness import AimeClient, AimeServer, Worker

from llama3 import SamplingParams


@pytest.fixture(scope="module")
def own(tmp_path_factory, smollm2_path):
    server = AimeServer(run_dir=tmp_path_factory.mktemp("aime-restart")).start()
    worker = Worker(server.url, smollm2_path, max_batch=2).start()
    yield server, worker
    worker.stop()
    server.stop()


def _chat(smollm2, content, n):
    dialog = [{"role": "user", "content": content}]
    return dialog, smollm2.chat([dialog], SamplingParams(temperature=0, max_tokens=n))[0]


def _until(worker, check, timeout: float = 60):
    """check()'s first truthy value, polled; else fail with the worker's output (never hang)."""
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, (
            f"waited {timeout} s; the worker said:\n{worker.err.text()}"
        )
        time.sleep(0.05)
    return got


def test_the_worker_survives_a_server_restart(own, smollm2):
    server, worker = own
    dialog, want = _chat(smollm2, "Name a fruit.", 8)
    c = AimeClient(server.url)
    assert c.request(chat_context=dialog, temperature=0, max_gen_tokens=8)["text"] == want.text
    c.close()

    mark = len(worker.err.lines)
    server.kill()
    worker.err.wait_for(
        rf"Connection to API Server {server.url} offline for .*Trying to reconnect", 15, mark
    )
    time.sleep(1.5)  # a few failed reconnection attempts
    assert worker.proc.poll() is None
    server.start()  # same port, a fresh server that has never seen this worker
    worker.err.wait_for(rf"Connection to API Server {server.url} is back", 15, mark)

    c = AimeClient(server.url)
    got = c.request(chat_context=dialog, temperature=0, max_gen_tokens=8)
    c.close()
    assert got["text"] == want.text and got["num_generated_tokens"] == len(want.tokens)


def test_sigterm_finishes_running_jobs_then_exits_0(own, smollm2):
    server, worker = own
    n = 100  # long enough to be running when the signal lands, on a fast CPU too
    dialog, want = _chat(smollm2, "Write a long story about a brave mouse.", n)
    c = AimeClient(server.url)
    job = c.request(wait=False, chat_context=dialog, temperature=0, max_gen_tokens=n)
    _until(worker, lambda: c.progress(job["job_id"]).get("progress", {}).get("progress", 0) > 0)
    worker.proc.send_signal(signal.SIGTERM)
    worker.err.wait_for(r"stopping: finishing 1 running job", 10)
    # The worker exits before the client looks again (AIME clients poll at their own pace): its
    # open job request ended on its own (the server's 30 s request timeout), since a hung-up one
    # makes the server take the worker for offline and lapse the job it has not handed out yet.
    assert worker.wait(60) == 0
    p = c.progress(job["job_id"])
    c.close()
    assert p["job_result"]["text"] == want.text  # the whole answer, not a cut-off one
    assert p["job_result"]["num_generated_tokens"] == len(want.tokens)
