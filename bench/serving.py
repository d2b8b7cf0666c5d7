"""Slipway's serving runtime against a bare ``kserve.Model`` on the same model, same run.

    python bench/serving.py [--seconds 6] [--rounds 3] [--concurrency 1 8 32]

Trains a small PyTorch MLP on scikit-learn's digits (a few seconds), saves it as an MLflow
model with a signature, an input example and a drift baseline, then starts three servers on
127.0.0.1, each its own process with one torch thread and per-request logging off:

- ``bare``: a ``kserve.Model`` whose plain ``def predict`` runs torch inline (what the KServe
  docs show), loading the same artifact with ``mlflow.pytorch.load_model``;
- ``slipway``: ``python -m slipway_serving`` as it starts with no batching flags (validation,
  metrics, drift, predict in a model thread that takes the requests queued while it was busy
  together, up to 32 instances, never waiting for more);
- ``slipway-1``: the same with ``--max-batch-size 1``: one request per model call.

For each concurrency, the servers take turns (``--rounds`` slices each, so that noise from
other processes on the machine spreads over all of them) under a closed loop of single-instance
V1 requests on keep-alive connections, from a minimal asyncio HTTP/1.1 client in this process.
Prints requests/s, p50, p99 and the server process's CPU time per request (user + system, from
``/proc``: less sensitive to the other load on the machine than the rates), and the ratios
against ``bare``. Bounded: about
``len(concurrency) * 3 * seconds`` of load plus training and startup (two to four minutes with the
defaults on 2 busy cores, most of it importing torch, MLflow and KServe).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common import cpu_seconds

HOST = "127.0.0.1"
MODEL_NAME = "digits"


# -- the model ---------------------------------------------------------------------------------


def train_and_save(directory: Path) -> tuple[Path, list[bytes]]:
    """Train the MLP, save it as an MLflow model with a baseline; return it and request bodies."""
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=0)
    # Probabilities out, like the training package's models.
    nn = torch.nn
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10), nn.Softmax(dim=1))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    inputs, targets = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.nll_loss(torch.log(net(inputs) + 1e-9), targets).backward()
        optimizer.step()
    net.eval()
    path = directory / "model"
    with torch.no_grad():
        probs = net(torch.from_numpy(x_test)).numpy()
    mlflow.pytorch.save_model(net, str(path), signature=infer_signature(x_test, probs), input_example=x_test[:2])
    features = []
    for i in range(64):
        edges = np.linspace(0.0, 16.0, 9)
        counts = np.histogram(np.clip(x_train[:, i], 0, 16), bins=edges)[0]
        features.append({"index": i, "name": f"pixel_{i}", "edges": edges.tolist(), "counts": counts.tolist()})
    baseline = {"format": "slipway.drift-baseline", "version": 1, "n": len(x_train),
                "n_features": 64, "features": features}  # fmt: skip
    (path / "baseline.json").write_text(json.dumps(baseline))
    bodies = [json.dumps({"instances": [row.tolist()]}).encode() for row in x_test[:64]]
    return path, bodies


# -- the bare server (run as a subprocess of this script) ---------------------------------------


def bare_server(model_dir: str, port: int) -> None:
    """A plain ``kserve.Model`` with a sync ``predict``; same threads and logging as Slipway."""
    import logging

    sys.argv = sys.argv[:1]
    import kserve
    import mlflow.pytorch
    import torch
    from kserve.logging import configure_logging

    configure_logging()
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    torch.set_num_threads(1)

    class BareModel(kserve.Model):  # type: ignore[misc]
        def load(self) -> bool:
            self.net = mlflow.pytorch.load_model(model_dir)
            self.ready = True
            return True

        def predict(self, payload, headers=None):
            x = torch.tensor(payload["instances"], dtype=torch.float32)
            with torch.inference_mode():
                out = self.net(x)
            return {"predictions": out.argmax(dim=1).tolist()}

    model = BareModel(MODEL_NAME)
    model.load()

    class Server(kserve.ModelServer):  # type: ignore[misc]
        def setup_event_loop(self):
            super().setup_event_loop()
            self._rest_server.config.host = HOST

    Server(http_port=port, enable_grpc=False, enable_latency_logging=False).start([model])


# -- load generation ----------------------------------------------------------------------------


@dataclass
class Result:
    """Latencies (seconds) and wall time of all the slices one server ran at one concurrency."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0
    cpu: float = 0.0

    @property
    def cpu_per_request(self) -> float:
        return self.cpu / len(self.latencies) if self.latencies else float("nan")

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _worker(port: int, path: str, bodies: list[bytes], stop: float, result: Result) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    head = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
    i = 0
    try:
        while time.perf_counter() < stop:
            body = bodies[i % len(bodies)]
            i += 1
            started = time.perf_counter()
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status_line.split()[1] == b"200":
                result.latencies.append(time.perf_counter() - started)
            else:
                result.errors += 1
    finally:
        writer.close()


async def load(port: int, bodies: list[bytes], concurrency: int, seconds: float) -> Result:
    """A closed loop of ``concurrency`` connections for ``seconds``."""
    result = Result()
    path = f"/v1/models/{MODEL_NAME}:predict"
    started = time.perf_counter()
    stop = started + seconds
    await asyncio.gather(*(_worker(port, path, bodies, stop, result) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


# -- orchestration ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{HOST}:{port}/v2/models/{MODEL_NAME}/ready"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server on {port} not ready after {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="load per server and level")
    parser.add_argument("--rounds", type=int, default=3, help="slices the seconds are cut into")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--bare-server", nargs=2, metavar=("MODEL_DIR", "PORT"), help="internal")
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server[0], int(args.bare_server[1]))
        return 0

    begun = time.monotonic()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    serving_src = str(Path(__file__).resolve().parents[1] / "serving")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [serving_src, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as tmp:
        model_dir, bodies = train_and_save(Path(tmp))
        print(f"model trained and saved in {time.monotonic() - begun:.1f}s", flush=True)
        slipway = [sys.executable, "-m", "slipway_serving", "--model-uri", str(model_dir),
                   "--model-name", MODEL_NAME, "--model-version", "1", "--host", HOST]  # fmt: skip
        commands = {
            "bare": [sys.executable, __file__, "--bare-server", str(model_dir)],
            "slipway": slipway,
            "slipway-1": [*slipway, "--max-batch-size", "1"],
        }
        ports: dict[str, int] = {}
        processes: dict[str, subprocess.Popen[bytes]] = {}
        log_dir = Path(tmp)
        try:
            for name, command in commands.items():
                port = ports[name] = free_port()
                argv = [*command, str(port)] if name == "bare" else [*command, "--http-port", str(port)]
                processes[name] = subprocess.Popen(
                    argv, env=env, stdout=subprocess.DEVNULL,
                    stderr=(log_dir / f"{name}.log").open("wb"),
                )  # fmt: skip
            for name, process in processes.items():
                wait_ready(ports[name], process)
            print(f"servers ready after {time.monotonic() - begun:.1f}s", flush=True)
            pids = {name: process.pid for name, process in processes.items()}
            results = run_matrix(ports, pids, bodies, args.concurrency, args.seconds, args.rounds)
        finally:
            for process in processes.values():
                process.send_signal(signal.SIGTERM)
            for process in processes.values():
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
    report(results, args.concurrency)
    print(f"total {time.monotonic() - begun:.1f}s")
    return 0


def run_matrix(
    ports: dict[str, int],
    pids: dict[str, int],
    bodies: list[bytes],
    levels: list[int],
    seconds: float,
    rounds: int,
) -> dict[tuple[str, int], Result]:
    results: dict[tuple[str, int], Result] = {}
    names = list(ports)
    for concurrency in levels:
        asyncio.run(load(ports[names[0]], bodies, concurrency, 0.3))  # warm the connections
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                cpu = cpu_seconds(pids[name])
                part = asyncio.run(load(ports[name], bodies, concurrency, seconds / rounds))
                total = results.setdefault((name, concurrency), Result())
                total.cpu += cpu_seconds(pids[name]) - cpu
                total.latencies += part.latencies
                total.seconds += part.seconds
                total.errors += part.errors
    return results


def report(results: dict[tuple[str, int], Result], levels: list[int]) -> None:
    names = ["bare", *sorted({name for name, _ in results} - {"bare"})]
    print()
    print(f"{'server':<14} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu us/req':>10} {'errors':>6}")
    for concurrency in levels:
        for name in names:
            r = results[(name, concurrency)]
            print(
                f"{name:<14} {concurrency:>4} {r.throughput:>8.0f} {r.quantile(0.5) * 1e3:>8.2f} "
                f"{r.quantile(0.99) * 1e3:>8.2f} {r.cpu_per_request * 1e6:>10.0f} {r.errors:>6}"
            )
    print()
    print("ratios against bare (throughput: higher is better; latency and CPU: lower is better)")
    print(f"{'server':<14} {'conc':>4} {'req/s':>8} {'p50':>8} {'p99':>8} {'cpu/req':>8}")
    for concurrency in levels:
        bare = results[("bare", concurrency)]
        for name in names[1:]:
            r = results[(name, concurrency)]
            print(
                f"{name:<14} {concurrency:>4} {r.throughput / bare.throughput:>8.2f} "
                f"{r.quantile(0.5) / bare.quantile(0.5):>8.2f} "
                f"{r.quantile(0.99) / bare.quantile(0.99):>8.2f} "
                f"{r.cpu_per_request / bare.cpu_per_request:>8.2f}"
            )


if __name__ == "__main__":
    sys.exit(main())
