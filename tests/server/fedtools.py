"""Shared helpers of the federated tests: tiny tabular sites, tiny configs, an in-process Grid.

The sites are clinical (tabular) so a round takes well under a second on one core; two tasks
(classification, survival) with their own stems exercise per-task aggregation of adapters,
heads and stems.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from unicon_core.config import Modality, TaskKind, TaskSpec
from unicon_core.data.manifest import SiteMetadata, write_site_json
from unicon_core.federation.config import site_dirs_override

FEATURES = ["f0", "f1", "f2"]
CLS_TASK = "tab_cls"
SURV_TASK = "tab_surv"


def task_spec(name: str) -> TaskSpec:
    """One of the two tiny test tasks (small LoRA rank keeps skills small)."""
    kind = TaskKind.CLASSIFICATION if name == CLS_TASK else TaskKind.SURVIVAL
    return TaskSpec(
        name=name, kind=kind, modality=Modality.CLINICAL, spatial_dims=0,
        input_size=[len(FEATURES)], num_classes=2, feature_names=list(FEATURES),
        lora={"rank": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["qkv", "linear1"]},
    )


def make_site(root: Path, name: str, task: str, n: int = 24, seed: int = 0) -> Path:
    """Write a valid tabular site folder (``site.json`` + ``manifest.csv``) and return it."""
    rng = np.random.default_rng(seed)
    site = root / name
    site.mkdir(parents=True)
    spec = task_spec(task)
    write_site_json(site, SiteMetadata(site=name, synthetic=True, source="test",
                                       description="tiny test site", task=spec))
    x = rng.normal(size=(n, len(FEATURES)))
    splits = (["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    rows = []
    for i in range(n):
        row = {f: f"{x[i, j]:.4f}" for j, f in enumerate(FEATURES)}
        row.update(id=f"{name}-{i}", split=splits[i])
        if task == CLS_TASK:
            row["label"] = str(i % 2)  # both classes in every split
        else:
            row["time"] = f"{float(np.exp(-x[i, 0]) * 100 + 1):.3f}"
            row["event"] = str(int(i % 3 != 0))
        rows.append(row)
    with (site / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return site


def make_sites(root: Path, layout: Sequence[tuple[str, str, int]]) -> list[Path]:
    """Sites from ``(name, task, n)`` triples."""
    return [make_site(root, name, task, n, seed=i) for i, (name, task, n) in enumerate(layout)]


#: 3 sites, 2 tasks: two classification sites of different sizes, one survival site.
THREE_SITES = [("site_a", CLS_TASK, 24), ("site_b", CLS_TASK, 36), ("site_c", SURV_TASK, 24)]


def tiny_overrides(
    site_dirs: Sequence[Path], run_dir: Path, rounds: int = 2, *extra: str
) -> list[str]:
    """Hydra overrides of a tiny, fast federated run writing into ``run_dir``."""
    return [
        "experiment=demo",
        site_dirs_override(site_dirs),
        f"federation.rounds={rounds}",
        f"federation.run_dir='{run_dir}'",
        "federation.wandb=disabled",
        "backbone.hidden_size=32",
        "backbone.num_layers=2",
        "backbone.num_heads=2",
        "backbone.mlp_dim=64",
        "train.max_steps=3",
        "train.batch_size=8",
        *extra,
    ]


@dataclass
class Exchange:
    """One instruction and its reply, as they crossed the (simulated) wire."""

    node_id: int
    instruction: Message
    reply: Message


@dataclass
class InProcessGrid(Grid):
    """A Grid that runs the ClientApp of each node in-process, deterministically.

    Every message is serialised to protobuf and back in both directions (as on the wire) and
    recorded in :attr:`exchanges`, so a test can inspect everything that left every site.
    ``node_configs`` gives each node its node config (default: simulation partition ids).
    """

    client_app: ClientApp
    num_nodes: int
    node_configs: list[dict] | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    hook: Callable[[Message], None] | None = None

    def __post_init__(self) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        # What Flower's runtime sets for a ServerApp process (Message() reads it).
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
        self.node_ids = [1000 + i for i in range(self.num_nodes)]
        configs = self.node_configs or [
            {"partition-id": i, "num-partitions": self.num_nodes} for i in range(self.num_nodes)
        ]
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config=cfg, state=RecordDict(), run_config={})
            for nid, cfg in zip(self.node_ids, configs, strict=True)
        }
        self._ids = itertools.count()
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        """Unused: the in-process grid has one implicit run."""

    @property
    def run(self) -> Run:
        """Unused."""
        raise NotImplementedError

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Build an instruction message."""
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        """The simulated nodes."""
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node's ClientApp right away."""
        ids = []
        for msg in messages:
            message_id = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = message_id
            msg.metadata.__dict__["_src_node_id"] = 0
            wire_in = message_from_proto(message_to_proto(msg))
            try:
                reply = self.client_app(wire_in, self.contexts[msg.metadata.dst_node_id])
            except Exception as ex:  # what Flower's runtime does with a raising ClientApp
                reason = f"{type(ex)}:<'{ex}'>"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                                reply_to=wire_in)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            wire_out = message_from_proto(message_to_proto(reply))
            self.exchanges.append(Exchange(msg.metadata.dst_node_id, wire_in, wire_out))
            if self.hook is not None:
                self.hook(wire_out)
            self._replies[message_id] = wire_out
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Replies of delivered messages."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        """Push and pull at once (everything is synchronous here)."""
        return self.pull_messages(self.push_messages(messages))


def run_in_process(
    overrides: Sequence[str], num_nodes: int, client_overrides: Sequence[str] = ()
) -> InProcessGrid:
    """Run the real ServerApp logic against the real ClientApp over an in-process grid."""
    from client.client_app import make_client_app
    from server.federation import run_federation
    from unicon_core.federation.config import load_settings

    grid = InProcessGrid(make_client_app([*overrides, *client_overrides]), num_nodes)
    run_federation(grid, load_settings(overrides))
    return grid
