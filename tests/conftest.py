import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts with no compiled graphs and zeroed Dynamo counters."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()
