"""Process-level tuning the serve command applies before it serves."""

from __future__ import annotations

import gc

from davserver.server import freeze_startup_objects


def test_objects_built_before_serving_leave_the_collected_generations() -> None:
    built = [{"n": i} for i in range(1000)]  # tracked containers, like the app's
    try:
        # Frozen objects are out of every generation a collection walks.
        assert freeze_startup_objects() >= len(built)
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
