import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # The models in tests are tiny: on a small shared machine, thread start-up and
    # contention cost far more than they save.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
