"""Flower ClientApp of a unicon site (``client.client_app:app``).

Thin on purpose: each handler resolves the experiment settings from the run config and hands
the message to :mod:`client.site_runner`. Heavy libraries (torch, peft, opacus, MONAI) load
inside the handlers, so a SuperNode imports this module quickly. Every reply passes the
:class:`~client.mods.EgressGuard`, which refuses any array that is not one of the task's skill
tensors; the :class:`~client.mods.AnswerTimer` adds how long the site took to answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.mods.answer_timer import AnswerTimer
from client.mods.egress_guard import EgressGuard
from unicon_core import console

if TYPE_CHECKING:
    from client.site_runner import SiteHooks


def make_client_app(
    overrides: Sequence[str] = (), hooks: SiteHooks | None = None, mods: Sequence[Any] = (),
    app_log: str = "",
) -> ClientApp:
    """A ClientApp; ``overrides`` are hydra overrides applied after the run config's own.

    ``hooks`` (research hooks of an in-process simulation, :class:`~client.site_runner.SiteHooks`)
    and extra ``mods`` (e.g. a simulated attack, inside the guard) are for simulations only; the
    deployed ``app`` has neither. ``app_log``: a run log Flower's records are appended to as
    well, in whatever process runs the app (:func:`unicon_core.console.app_lifespan`; the
    in-process engine's, whose ClientApps run in Ray actors).
    """
    extra = list(overrides)
    # The guard is outermost: it checks everything that leaves, the timer's metrics included.
    client_app = ClientApp(mods=[EgressGuard(), *mods, AnswerTimer()])

    client_app.lifespan()(partial(console.app_lifespan, log=app_log))

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        """Validate the site's data and introduce the site to the server."""
        from client import site_runner

        return site_runner.handle_query(msg, context, site_runner.settings_for(context, extra),
                                         hooks)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        """Train the task's skill locally for one round."""
        from client import site_runner

        return site_runner.handle_train(msg, context, site_runner.settings_for(context, extra),
                                         hooks)

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Evaluate the aggregated skill on the site's test split."""
        from client import site_runner

        return site_runner.handle_evaluate(msg, context, site_runner.settings_for(context, extra),
                                         hooks)

    return client_app


app = make_client_app()
