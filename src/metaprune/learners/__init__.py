"""Meta-learners behind one interface: ``adapt``, ``task_loss`` (the meta-objective),
``meta_step``, ``evaluate_task``. Built by name with ``build_learner``."""

from . import cavia, maml, protonet, reptile  # noqa: F401  (registration)
from .base import Adapted, Learner, Params
from .cavia import CAVIA
from .maml import ANIL, FOMAML, MAML, MetaSGD
from .protonet import ProtoNet
from .registry import LEARNERS, build_learner
from .reptile import Reptile

__all__ = ["Adapted", "Learner", "Params", "MAML", "FOMAML", "ANIL", "MetaSGD", "Reptile",
           "ProtoNet", "CAVIA", "LEARNERS", "build_learner"]
