"""Moved to seqserve.tasks.spec (a task is a set of named graphs and how they chain).
Kept only while the last importers move over."""

from seqserve.tasks.spec import *  # noqa: F401,F403
from seqserve.tasks.spec import TaskSpec as FamilySpec  # noqa: F401
from seqserve.tasks.spec import _by_name  # noqa: F401
