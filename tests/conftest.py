import os
from pathlib import Path

import pytest
import torch

from mimlib.images import load_binarized

os.environ.setdefault("MIMLIB_PROGRESS", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):   # `make unit` runs one worker per core: one torch thread each
    torch.set_num_threads(1)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class Interrupted(Exception):
    """Raised by :func:`interrupt_at` to stop a run at the end of an epoch, as a kill would."""


def interrupt_at(stop_epoch: int):
    """An end-of-epoch callback (``on_epoch_end(epoch, model)`` or ``after_epoch(epoch)``) that raises
    :class:`Interrupted` once epoch ``stop_epoch`` has ended, leaving that epoch's checkpoint behind."""
    def callback(epoch, *_):
        if epoch == stop_epoch:
            raise Interrupted(f"interrupted after epoch {epoch}")
    return callback


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def mnist():
    """Real MNIST found through MIMLIB_DATA (the shared offline data folder), loaded once."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real IDX files not available at {SHARED_DATA}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIMLIB_DATA", str(SHARED_DATA))
        mp.setenv("XDG_CACHE_HOME", "/nonexistent-mimlib-test-cache")
        yield load_binarized("mnist")


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
