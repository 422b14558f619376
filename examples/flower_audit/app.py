"""A Flower federation audited by gradaudit: 2 clients x 2 rounds of FedAvg on the embedded images.

Each client holds a private batch of B embedded images (client i: images i, i+9, i+18, ... so the classes
differ), trains K full-batch SGD steps per round with an ordinary PyTorch loop, and reports K, lr, B and its id
in its fit metrics. The server runs FedAvg wrapped in :class:`gradaudit.integrations.flower.AuditingStrategy`,
which attacks every client's update of every round and scores it against the private batch (known here,
because we are the experimenter; the attack itself sees only the update).

Two ways to run it (from the repository root):

    # Flower's simulation engine (Ray backend), everything in this process and Ray actors
    python examples/flower_audit/app.py simulation --out gradaudit-out/flower-audit

    # the same with Flower's Message API (@app.main() ServerApp, @app.train() ClientApp, serverapp FedAvg)
    python examples/flower_audit/app.py message --out gradaudit-out/flower-audit

    # a real Flower server on 127.0.0.1 and two client processes talking gRPC to it
    python examples/flower_audit/app.py loopback --out gradaudit-out/flower-audit

Both print the per-round leakage table and write ``OUT/results.sqlite`` (``audit`` table),
``OUT/audit-report.html``, ``OUT/audit-report/{leakage,rounds}.{md,csv}`` and the captured updates
(``OUT/audit/*-observation.{safetensors,json}``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass
class Settings:
    model: str = "lenet"
    batch_size: int = 1          # B: private images per client
    local_steps: int = 2         # K: full-batch SGD steps per round
    local_lr: float = 0.01
    rounds: int = 2
    clients: int = 2
    attack: str = "dlg"
    iterations: int = 40         # attack iterations (tiny: CPU example)
    proxy: bool = True
    seed: int = 0
    threads: int = 1
    dp_noise: float = 0.0        # > 0: the clients train with Opacus DP-SGD (noise multiplier sigma)
    dp_clip: float = 1.0         # Opacus' max_grad_norm C
    dp_delta: float = 1e-5


def model_spec(s: Settings):
    from gradaudit.data import load_dataset
    from gradaudit.models.registry import ModelSpec
    from gradaudit.threat.observation import DataSpec

    ds = load_dataset("embedded")
    kwargs = {"norm": "none"} if s.model == "convnet" else {}
    return ModelSpec(s.model, ds.num_classes, ds.shape, kwargs), DataSpec(ds.name, tuple(ds.mean), tuple(ds.std))


def private_batch(client_id: int, s: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``client_id``'s private images in [0, 1] and labels (the experimenter's ground truth)."""
    from gradaudit.data import load_dataset

    ds = load_dataset("embedded")
    idx = [(client_id + 9 * j + s.batch_size * 9 * client_id) % len(ds) for j in range(s.batch_size)]
    return ds.batch(idx)


def initial_weights(s: Settings) -> list:
    from gradaudit.models.registry import build_model

    torch.manual_seed(s.seed)
    return [v.detach().cpu().numpy() for v in build_model(model_spec(s)[0]).state_dict().values()]


# ----------------------------------------------------------------------------------------------- client
def make_client(client_id: int, s: Settings):
    """An ordinary Flower NumPyClient with a plain PyTorch training loop (nothing of gradaudit in its training)."""
    from flwr.client import NumPyClient

    from gradaudit.models.registry import build_model

    spec, data = model_spec(s)
    images, labels = private_batch(client_id, s)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)

    class Client(NumPyClient):
        def __init__(self) -> None:
            self.model = build_model(spec)

        def get_parameters(self, config):
            return [v.detach().cpu().numpy() for v in self.model.state_dict().values()]

        def set_parameters(self, weights) -> None:
            keys = list(self.model.state_dict())
            self.model.load_state_dict({k: torch.as_tensor(w) for k, w in zip(keys, weights)})

        def fit(self, parameters, config):
            torch.set_num_threads(s.threads)
            self.set_parameters(parameters)
            metrics = {"client_id": client_id, "local_steps": s.local_steps, "local_lr": s.local_lr,
                       "batch_size": len(labels)}
            if s.dp_noise > 0:
                metrics.update(self.fit_opacus(int(config.get("server_round", config.get("server-round", 0)))))
                return self.get_parameters({}), len(labels), metrics
            opt = torch.optim.SGD(self.model.parameters(), lr=s.local_lr)
            self.model.train()
            for _ in range(s.local_steps):
                opt.zero_grad()
                F.cross_entropy(self.model((images - mean) / std), labels).backward()
                opt.step()
            return self.get_parameters({}), len(labels), metrics

        def fit_opacus(self, server_round: int) -> dict:
            """The usual Opacus recipe: make_private, train, ask the accountant for epsilon."""
            from opacus import PrivacyEngine

            model = build_model(spec)  # a fresh module each round: make_private hooks into the module it wraps
            model.load_state_dict(self.model.state_dict())
            loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset((images - mean) / std, labels), batch_size=len(labels))
            engine = PrivacyEngine(accountant="rdp")
            private, opt, loader = engine.make_private(
                module=model, optimizer=torch.optim.SGD(model.parameters(), lr=s.local_lr), data_loader=loader,
                noise_multiplier=s.dp_noise, max_grad_norm=s.dp_clip, poisson_sampling=False,
                noise_generator=torch.Generator().manual_seed(1000 * server_round + client_id))
            for _ in range(s.local_steps):
                for x, y in loader:  # one full batch per step (sample rate 1)
                    opt.zero_grad()
                    F.cross_entropy(private(x), y).backward()
                    opt.step()
            self.model.load_state_dict(model.state_dict())
            return {"dp_epsilon": float(engine.get_epsilon(s.dp_delta)),
                    "defense": f"dpsgd:C={s.dp_clip:g},sigma={s.dp_noise:g}"}

        def evaluate(self, parameters, config):
            self.set_parameters(parameters)
            with torch.no_grad():
                loss = F.cross_entropy(self.model((images - mean) / std), labels)
            return float(loss), len(labels), {}

    return Client()


# ----------------------------------------------------------------------------------------------- server
def audit_settings(s: Settings, out: Path, run: str | None = None) -> dict:
    """What to audit: the attack on every client of every round, scored against the known private batches."""
    spec, data = model_spec(s)
    return dict(model=spec, data=data, run_dir=out, attack=s.attack, attack_options={"iterations": s.iterations},
                proxy=s.proxy, ground_truth=lambda client, rnd: private_batch(int(client), s), run=run, seed=s.seed)


def make_strategy(s: Settings, out: Path, run: str | None = None):
    """FedAvg (flwr.server.strategy) wrapped in AuditingStrategy."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvg

    from gradaudit.integrations.flower import AuditingStrategy

    fedavg = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=s.clients,
                    min_available_clients=s.clients, initial_parameters=ndarrays_to_parameters(initial_weights(s)),
                    on_fit_config_fn=lambda server_round: {"server_round": server_round})
    return AuditingStrategy(fedavg, **audit_settings(s, out, run))


def make_message_strategy(s: Settings, out: Path, run: str | None = None):
    """FedAvg of the Message API (flwr.serverapp.strategy) wrapped in AuditingMessageStrategy."""
    from flwr.serverapp.strategy import FedAvg

    from gradaudit.integrations.flower import AuditingMessageStrategy

    fedavg = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=s.clients,
                    min_available_nodes=s.clients)
    return AuditingMessageStrategy(fedavg, **audit_settings(s, out, run))


def message_train(msg, client_id: int, s: Settings):
    """The Message-API client: the same training, weights in an ArrayRecord, metrics in a MetricRecord."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    weights, n, metrics = make_client(client_id, s).fit(msg.content["arrays"].to_numpy_ndarrays(),
                                                        dict(msg.content["config"]))
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}  # MetricRecord: numbers only
    content = RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord({**numeric, "num-examples": n})})
    return Message(content=content, reply_to=msg)


def run_message_simulation(s: Settings, out: Path, run: str | None = None):
    """Flower's Message API under the simulation engine (Ray backend)."""
    from flwr.app import ArrayRecord
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation as flwr_run_simulation

    strategy = make_message_strategy(s, out, run)
    client_app, server_app = ClientApp(), ServerApp()

    @client_app.train()
    def train(msg, context):
        return message_train(msg, int(context.node_config["partition-id"]), s)

    @server_app.main()
    def main(grid, context):
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial_weights(s)), num_rounds=s.rounds)

    flwr_run_simulation(server_app=server_app, client_app=client_app, num_supernodes=s.clients,
                        backend_config=_ray_config(s))
    return strategy


def _ray_config(s: Settings) -> dict:
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": max(1, min(s.clients, os.cpu_count() or 1)), "include_dashboard": False}}


def run_simulation(s: Settings, out: Path, run: str | None = None):
    """Flower's simulation engine with the Ray backend: ``s.clients`` virtual SuperNodes."""
    from flwr.client import ClientApp
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.simulation import run_simulation as flwr_run_simulation

    strategy = make_strategy(s, out, run)

    def server_fn(context):
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=s.rounds))

    def client_fn(context):
        return make_client(int(context.node_config["partition-id"]), s).to_client()

    flwr_run_simulation(server_app=ServerApp(server_fn=server_fn), client_app=ClientApp(client_fn=client_fn),
                        num_supernodes=s.clients, backend_config=_ray_config(s))
    return strategy


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_loopback(s: Settings, out: Path, run: str | None = None, port: int | None = None):
    """A real Flower server (gRPC, 127.0.0.1) in this process and one OS process per client."""
    from flwr.server import ServerConfig, start_server

    strategy = make_strategy(s, out, run)
    address = f"127.0.0.1:{port or free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS=str(s.threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "client", "--address", address]
    for k, v in asdict(s).items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    clients = [subprocess.Popen(cmd + ["--client-id", str(i)], env=env) for i in range(s.clients)]
    try:
        start_server(server_address=address, config=ServerConfig(num_rounds=s.rounds), strategy=strategy)
        codes = [c.wait(timeout=120) for c in clients]
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
    if any(codes):
        raise RuntimeError(f"client processes exited with {codes}")
    return strategy


def run_client(s: Settings, client_id: int, address: str) -> None:
    from flwr.client import start_client

    torch.set_num_threads(s.threads)
    start_client(server_address=address, client=make_client(client_id, s).to_client(), insecure=True)


# ------------------------------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("simulation", "message", "loopback", "client"))
    p.add_argument("--out", default="gradaudit-out/flower-audit")
    p.add_argument("--run", default=None, help="run name in the results store (default: flower-<timestamp>)")
    p.add_argument("--address", default=None, help="client mode: the server's address")
    p.add_argument("--client-id", type=int, default=0)
    for k, v in asdict(Settings()).items():
        kind = (lambda x: x.lower() in ("1", "true", "yes")) if isinstance(v, bool) else type(v)
        p.add_argument(f"--{k.replace('_', '-')}", type=kind, default=v)
    args = p.parse_args(argv)
    s = Settings(**{k: getattr(args, k) for k in asdict(Settings())})
    return args, s


def main(argv=None) -> int:
    args, s = parse(argv)
    torch.set_num_threads(s.threads)
    if args.mode == "client":
        run_client(s, args.client_id, args.address)
        return 0
    from gradaudit.report.audit import format_leakage, leakage_table, round_table, write_audit_report
    from gradaudit.integrations.audit import AuditStore
    from gradaudit.report.tables import to_markdown
    from gradaudit.report.audit import ROUND_COLUMNS

    out = Path(args.out)
    t0 = time.perf_counter()
    runner = {"simulation": run_simulation, "message": run_message_simulation, "loopback": run_loopback}[args.mode]
    strategy = runner(s, out, args.run)
    seconds = time.perf_counter() - t0
    with AuditStore(out) as store:
        rows = leakage_table(store, strategy.run)
    paths = write_audit_report(out, strategy.run)
    print(f"\nrun {strategy.run}: {s.clients} clients x {s.rounds} rounds ({args.mode}), {seconds:.1f} s in all")
    print(format_leakage(rows))
    print(to_markdown(round_table(rows), ROUND_COLUMNS))
    print(f"report: {paths['report']}")
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
