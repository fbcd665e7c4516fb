"""The foundation model: frozen transformer backbone, modality stems, task heads and skills."""

from unicon_core.model.unicon import SkillStateError, UniconModel

__all__ = ["SkillStateError", "UniconModel"]
