import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MIMLIB_PROGRESS", "0")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
