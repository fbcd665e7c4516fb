"""Client mods: cross-cutting behaviour around every message a site handles."""

from client.mods.answer_timer import AnswerTimer
from client.mods.attack import UpdateAttack
from client.mods.egress_guard import EgressGuard

__all__ = ["AnswerTimer", "EgressGuard", "UpdateAttack"]
