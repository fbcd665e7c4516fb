"""Simulated poisoning: a client mod that turns chosen sites into attackers (simulation only).

The attacker trains honestly, then returns ``sent + factor * (trained - sent)`` instead of its
trained skill (``factor`` -1: sign flip; +10: scaled; -10: both). It is only ever added by a
benchmark that runs the ClientApp in process (:func:`client.client_app.make_client_app`'s
``mods``); the deployed ``app`` has no such mod. It sits inside the egress guard, so an
attacked reply still passes the same checks as any other.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from unicon_core.federation.protocol import ConfigKey, RecordKey
from unicon_flower.records import arrays_to_record, record_to_arrays

Arrays = Mapping[str, np.ndarray]
#: ``(round, node id, skill sent, skill trained)`` of every honest training reply
Observer = Callable[[int, int, dict[str, np.ndarray], dict[str, np.ndarray]], None]


def attack_update(sent: Arrays, trained: Arrays, factor: float) -> dict[str, np.ndarray]:
    """``sent + factor * (trained - sent)`` per key, in each key's dtype (the poisoned reply)."""
    out = {}
    for key, arr in trained.items():
        start = np.asarray(sent[key])
        out[key] = (start + factor * (np.asarray(arr) - start)).astype(start.dtype)
    return out


class UpdateAttack:
    """Client mod: the train replies of ``nodes`` carry a scaled/flipped update.

    Parameters
    ----------
    factor : float or None
        The update multiplier (None: no attack; the mod then only observes).
    nodes : collection of int
        Node ids of the attacking sites.
    observe : callable, optional
        Called with ``(round, node, sent, trained)`` for every training reply before any attack
        (e.g. to record honest update norms).
    """

    def __init__(self, factor: float | None, nodes: Collection[int],
                 observe: Observer | None = None) -> None:
        if factor is not None and not np.isfinite(factor):
            raise ValueError(f"attack factor must be finite, got {factor}")
        self.factor = factor
        self.nodes = frozenset(int(n) for n in nodes)
        self.observe = observe

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Run the app; poison the reply of an attacking node's training round."""
        reply = call_next(msg, context)
        skill = RecordKey.SKILL.value
        if (msg.metadata.message_type != MessageType.TRAIN or reply.has_error()
                or skill not in reply.content.array_records):
            return reply
        sent = record_to_arrays(msg.content.array_records[skill])
        trained = record_to_arrays(reply.content.array_records[skill])
        config = msg.content.config_records.get(RecordKey.CONFIG.value, ConfigRecord())
        rnd = int(config.get(ConfigKey.SERVER_ROUND.value, 0))
        if self.observe is not None:
            self.observe(rnd, context.node_id, sent, trained)
        if self.factor is not None and context.node_id in self.nodes:
            bad = attack_update(sent, trained, self.factor)
            reply.content[skill] = arrays_to_record(bad)
        return reply
