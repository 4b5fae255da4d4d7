import os

import pytest

SHARED_CORPORA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from vllm_ngram_style.testing.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer(str(tmp_path_factory.mktemp("tiny_tok")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from vllm_ngram_style.testing.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture(scope="session")
def corpora_dir():
    path = os.path.abspath(SHARED_CORPORA)
    if not os.path.isdir(path):
        pytest.skip("../shared/corpora is absent")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: a second intra-op thread only adds spin-wait contention (100x slower on a
    loaded 2-core machine). Modules opt in with pytestmark = pytest.mark.usefixtures(...)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- one real server for every server test module ---------------------------------------------------

SERVER_FIXTURE = "style_server"
_last_server_test = []  # node id of the last collected test that uses the server
_running_servers = []


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: the items that will really run
def pytest_collection_modifyitems(session, config, items):
    users = [item.nodeid for item in items if SERVER_FIXTURE in getattr(item, "fixturenames", ())]
    _last_server_test[:] = users[-1:]


def pytest_runtest_teardown(item, nextitem):
    """Stop the server right after the last test that needs it (not at the end of the session):
    the modules after it start engines of their own, and CI has 2 cores."""
    if _last_server_test and item.nodeid == _last_server_test[0]:
        for server in _running_servers:
            server.stop()


@pytest.fixture(scope="session")
def server_packs(tiny_model_dir, tmp_path_factory):
    from helpers import train_test_packs

    return train_test_packs(tiny_model_dir, tmp_path_factory.mktemp("server_packs"))


@pytest.fixture(scope="session")
def style_server(tiny_model_dir, server_packs, tmp_path_factory):
    """`vllm-ngram-style serve` of the tiny model with styles alpha and beta (tests/style_server.py)."""
    pytest.importorskip("vllm")
    pytest.importorskip("openai")
    import style_server as launcher

    try:
        server = launcher.start(tiny_model_dir, server_packs, tmp_path_factory.mktemp("server"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    _running_servers.append(server)
    yield server
    server.stop()
