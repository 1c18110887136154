import logging

import pytest
import torch

from separable import write_separable_files


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # The models in tests are tiny: on a small shared machine, thread start-up and
    # contention cost far more than they save.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def logging_levels_restored():
    """`egath.cli.main`, called in-process by some tests, sets the root and egath loggers' levels;
    later tests that read caplog must not inherit them."""
    loggers = [logging.getLogger(), logging.getLogger("egath")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


@pytest.fixture(scope="session")
def separable_files(tmp_path_factory):
    """pairs.h5, features.h5 and graph.h5 of the separable problem in tests/separable.py."""
    return write_separable_files(tmp_path_factory.mktemp("separable"))


@pytest.fixture(scope="session")
def search_demo(tmp_path_factory):
    """A trained model and its index over the synthetic dataset (tests/search_demo.py), shared
    by the search and server tests."""
    from search_demo import make_search_demo

    return make_search_demo(tmp_path_factory.mktemp("search"))
