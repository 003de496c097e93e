"""Checks and policies shared by the ops and modules, by concern: argument checks (:mod:`.args`),
the dtype policy (:mod:`.dtypes`) and the superpixel label layout (:mod:`.labels`)."""

from .args import *  # noqa: F401,F403
from .dtypes import *  # noqa: F401,F403
from .labels import *  # noqa: F401,F403
