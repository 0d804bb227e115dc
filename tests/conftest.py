import os

import pytest
import torch

# Tests run on two shared CPU cores: one intra-op thread each keeps them predictable.
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    return 0
