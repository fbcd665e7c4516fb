"""A Flower Grid that runs ClientApps in this process: the whole federation without processes.

The real ServerApp logic (:func:`server.federation.run_federation`) drives it like Flower's own
grid; each message is delivered to its node's ClientApp right away, serialised to protobuf and
back in both directions as on the wire, and recorded. Used by the tests (every message of a run
can be inspected) and by benchmarks that need many runs quickly (``simulations/``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run


@dataclass
class Exchange:
    """One instruction and its reply, as they crossed the (simulated) wire."""

    node_id: int
    instruction: Message
    reply: Message


#: Node id of the first in-process node (node ``i`` is ``FIRST_NODE + i``).
FIRST_NODE = 1000


def act_as_server_app() -> None:
    """Set what Flower's runtime sets for a ServerApp process (``Message()`` reads it), so
    messages can be built in this process (an in-process run, or measuring message bytes)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@dataclass
class InProcessGrid(Grid):
    """A Grid that runs the ClientApp of each node in-process, deterministically.

    Every message is serialised to protobuf and back in both directions (as on the wire) and
    recorded in :attr:`exchanges`, so a test can inspect everything that left every site.
    ``node_configs`` gives each node its node config (default: simulation partition ids).
    """

    client_app: Callable[[Message, Context], Message]
    num_nodes: int
    node_configs: list[dict[str, Any]] | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    hook: Callable[[Message], None] | None = None

    def __post_init__(self) -> None:
        act_as_server_app()
        self.node_ids = [FIRST_NODE + i for i in range(self.num_nodes)]
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
