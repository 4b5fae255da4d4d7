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
