"""`reasonrec serve` as the images run it: a real process, ready after loading, answering both
protocols, exiting 0 on SIGTERM after a graceful shutdown; a bad release exits 2 with one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from serving.cli import build_parser, main
from serving.proto.gen.reasonrec.v1 import recommend_pb2 as pb
from serving.proto.gen.reasonrec.v1 import recommend_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REASONREC_")}
    env.update(
        REDIS_URL=redis_url, HF_HUB_OFFLINE="1", REASONREC_NUM_THREADS="1",
        REASONREC_WARMUP="false", **extra,
    )  # fmt: skip
    return env


def test_serve_parses_the_image_command() -> None:
    args = build_parser().parse_args(
        ["serve", "--release", "/models/release", "--host", "0.0.0.0", "--port", "8000",
         "--grpc-port", "50051"]
    )  # fmt: skip
    assert args.release == Path("/models/release") and args.port == 8000
    assert args.grpc_port == 50051 and callable(args.handler)


@pytest.mark.slow
def test_serve_process_answers_and_stops_on_sigterm(
    releases: Any, redis_url: str, tools: Any, tmp_path: Path
) -> None:
    http_port, grpc_port = _free_port(), _free_port()
    experiments = tmp_path / "experiments.yaml"
    experiments.write_text("experiments: []\n")
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "serve", "--release", str(releases.a),
         "--host", "127.0.0.1", "--port", str(http_port), "--grpc-port", str(grpc_port)],
        env=_env(redis_url, REASONREC_EXPERIMENTS_FILE=str(experiments),
                 REASONREC_LOG_LEVEL="warning"),
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return tools.http(http_port, "GET", "/readyz")[0] == 200
            except OSError:
                return False

        tools.wait_for(ready, timeout_s=90, what="readiness of the serve process")
        history = releases.history(3)[:4]
        status, body = tools.http(
            http_port, "POST", "/v1/recommend", {"user_id": "cli", "history": history, "k": 4}
        )
        assert status == 200 and len(body["items"]) == 4
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            got = pb_grpc.RecommendServiceStub(channel).Recommend(
                pb.RecommendRequest(user_id="cli", history=pb.History(item_ids=history), k=4),
                timeout=30,
            )
        assert [i.item_id for i in got.items] == [i["item_id"] for i in body["items"]]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "serve.log").read_text()
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def test_serve_with_a_bad_release_exits_2(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    for key, value in _env(redis_url).items():
        monkeypatch.setenv(key, value)
    code = main(["serve", "--release", str(tmp_path / "nope"), "--port", "0", "--grpc-port", "0"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("reasonrec serve: error:") and "nope" in err[-1]
    assert "Traceback" not in "\n".join(err)
