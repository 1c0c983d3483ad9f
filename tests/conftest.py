"""Shared test settings: hypothesis runs few, small examples so the whole suite stays fast on 2 cores."""

import pytest
import torch
from hypothesis import settings

# 25 random shapes per property is enough to hit MHA, GQA and MQA layouts; no deadline because a shared
# CPU makes single examples slow now and then; no example database, so no .hypothesis/ folder appears.
settings.register_profile("gqa-series", max_examples=25, deadline=None, database=None)
settings.load_profile("gqa-series")


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tiny tensors on one thread: on a busy 2-core machine the thread pool costs more than it gives
    (measured: about 5x faster for the attention properties)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
