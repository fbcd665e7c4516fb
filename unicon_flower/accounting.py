"""Communication accounting: bytes each site receives and sends, per round.

Sizes are measured on the serialized message content, the way Flower 1.41 ships it: a message's
``RecordDict`` is split into content-addressed objects (records, arrays, array chunks), each
deflated to bytes and pushed once. :func:`content_bytes` sums the deflated size of every distinct
object in that tree, so it counts headers, keys, configs and metrics as well as tensor bytes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.app import RecordDict


def content_bytes(content: RecordDict) -> int:
    """Serialized size in bytes of a message's content (every distinct object, deflated)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())


@dataclass
class CommLedger:
    """Bytes down (server -> site) and up (site -> server) per round and site."""

    down: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    up: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, server_round: int, site: str, *, down: int = 0, up: int = 0) -> None:
        """Add bytes of one message exchange (a round may have a train and an evaluate one)."""
        self.down[server_round][site] = self.down[server_round].get(site, 0) + down
        self.up[server_round][site] = self.up[server_round].get(site, 0) + up

    def round_summary(self, server_round: int) -> dict[str, dict[str, int]]:
        """``{site: {"bytes_down": n, "bytes_up": n}}`` of one round."""
        sites = sorted(set(self.down.get(server_round, {})) | set(self.up.get(server_round, {})))
        return {
            s: {
                "bytes_down": self.down.get(server_round, {}).get(s, 0),
                "bytes_up": self.up.get(server_round, {}).get(s, 0),
            }
            for s in sites
        }
