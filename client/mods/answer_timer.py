"""Answer timer: how long a site took to answer a message, reported with the reply.

``answer_s`` is the time from the server creating the instruction (``metadata.created_at``)
to the reply leaving this mod: queueing at the SuperLink, the SuperNode's polling, starting
the ClientApp process, imports and the work itself. It is what a deployment's cold start
costs per message (``simulations/cold_start_bench.py`` reports it). Clocks of server and site
are compared, so across hospitals it is only as good as their clock synchronisation (NTP).
``handle_s`` is the part spent inside the ClientApp handler (imports and work) and
``process_s`` the age of the process answering (Flower starts one per message: its start-up,
imports and the work), both from this site's clock alone.
"""

from __future__ import annotations

import time

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from unicon_core.federation.protocol import RecordKey
from unicon_core.processes import age_s

ANSWER_S = "answer_s"
HANDLE_S = "handle_s"
PROCESS_S = "process_s"


def process_age_s(pid: int | None = None) -> float | None:
    """Seconds since process ``pid`` (default: this one) started (psutil); None if unknown."""
    return age_s(pid)


class AnswerTimer:
    """Client mod adding ``answer_s``, ``handle_s``, ``process_s`` to a reply's metrics."""

    def __init__(self, metrics_record: str = RecordKey.METRICS.value) -> None:
        if not metrics_record:
            raise ValueError("metrics_record must be a non-empty record name")
        self.metrics_record = metrics_record

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Run the app and time it; replies without a metrics record pass unchanged."""
        start = time.time()
        reply = call_next(msg, context)
        if reply.has_error() or self.metrics_record not in reply.content.metric_records:
            return reply
        now = time.time()
        metrics = reply.content.metric_records[self.metrics_record]
        metrics[HANDLE_S] = now - start
        age = process_age_s()
        if age is not None:
            metrics[PROCESS_S] = age
        created = float(msg.metadata.created_at or 0.0)
        if created > 0:
            metrics[ANSWER_S] = max(0.0, now - created)
        return reply
