"""MNIST / Fashion-MNIST loading (search path, integrity checks), split and binarisation."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mimlib import images as I

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ----------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """Standard IDX encoding of a uint8 array."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def tiny_arrays(n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_dataset(base: Path, name: str = "mnist", arrays: dict | None = None,
                  gz: bool = True) -> dict[str, Path]:
    """Write the four IDX files of a tiny dataset to ``base/name``."""
    arrays = arrays if arrays is not None else tiny_arrays()
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, filename in I.FILES.items():
        data = idx_bytes(arrays[role])
        path = folder / (filename + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
        paths[role] = path
    return paths


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No MIMLIB_DATA, a private user cache: only what a test puts on the path is found."""
    monkeypatch.delenv("MIMLIB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path


@pytest.fixture(scope="module")
def real():
    """Both real datasets, found through MIMLIB_DATA, loaded once for the module."""
    if not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"real IDX files not available at {SHARED_DATA} (the shared offline data folder)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIMLIB_DATA", str(SHARED_DATA))
        mp.setenv("XDG_CACHE_HOME", "/nonexistent-mimlib-test-cache")
        yield {name: I.load_idx(name) for name in I.DATASETS}


# ----------------------------------------------------------------------------- the real files


def test_checksum_table_complete():
    assert set(I.MD5) == {f"{d}/{f}" for d in I.DATASETS for f in I.FILES.values()}
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in I.MD5.values())


def test_real_mnist(real):
    raw = real["mnist"]
    assert raw.folder == SHARED_DATA / "mnist"
    assert raw.train_images.shape == (60000, 28, 28) and raw.test_images.shape == (10000, 28, 28)
    assert raw.train_images.dtype == np.uint8 and raw.train_images.flags.writeable
    assert np.bincount(raw.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(raw.test_labels).tolist() == MNIST_TEST_COUNTS
    assert raw.train_images.max() == 255 and raw.train_images.min() == 0


def test_real_fashion_mnist(real):
    raw = real["fashion-mnist"]
    assert raw.train_images.shape == (60000, 28, 28) and raw.test_images.shape == (10000, 28, 28)
    assert np.bincount(raw.train_labels).tolist() == [6000] * 10
    assert np.bincount(raw.test_labels).tolist() == [1000] * 10


def test_real_split(real):
    raw = real["mnist"]
    d = I.split_and_binarize(raw, seed=3)
    assert d.train_u8.shape == (50000, 1, 28, 28) and d.val.shape == (10000, 1, 28, 28)
    assert d.test.shape == (10000, 1, 28, 28) and d.test_labels.shape == (10000,)
    # validation = the last 10k of the train file
    assert torch.equal(d.val_u8[:, 0], torch.from_numpy(raw.train_images[50000:]))
    assert torch.equal(d.val_labels, torch.from_numpy(raw.train_labels[50000:].astype(np.int64)))
    assert torch.equal(d.train_u8[:, 0], torch.from_numpy(raw.train_images[:50000]))
    assert d.train_labels.dtype == torch.int64
    assert set(torch.unique(d.val).tolist()) == {0.0, 1.0} and d.val.dtype == torch.float32
    # fixed binarisation: identical on every call, mean close to the intensities' mean
    again = I.split_and_binarize(raw, seed=99)
    assert torch.equal(d.val, again.val) and torch.equal(d.test, again.test)
    assert abs(d.test.mean().item() - I.to_intensity(d.test_u8).mean().item()) < 2e-3
    assert d.num_batches() == 500


def test_real_files_verified_against_table(real, tmp_path):
    """A real file under a known name with one flipped byte fails its MD5 check."""
    src = SHARED_DATA / "mnist" / "t10k-labels-idx1-ubyte.gz"
    good = I.read_idx(src, expected_ndim=1)
    data = bytearray(gzip.decompress(src.read_bytes()))
    data[100] = (data[100] + 1) % 10
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    bad.parent.mkdir()
    bad.write_bytes(bytes(data))
    with pytest.raises(I.DataIntegrityError, match=r"t10k-labels-idx1-ubyte.*MD5.*27ae3e4e"):
        I.read_idx(bad)
    assert len(good) == 10000


# ----------------------------------------------------------------------------- search path


def test_search_path_order(isolated, monkeypatch):
    a, b = isolated / "a", isolated / "b"
    monkeypatch.setenv("MIMLIB_DATA", os.pathsep.join([str(a), str(b)]))
    path = I.search_path(isolated / "root")
    assert path == [isolated / "root", a, b, isolated / "xdg-cache" / "mimlib", Path("/usr/share/datasets")]
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert I.cache_dir() == Path.home() / ".cache" / "mimlib"


def test_root_wins_over_env_and_env_paths_in_order(isolated, monkeypatch):
    write_dataset(isolated / "env2", arrays=tiny_arrays(seed=2))
    write_dataset(isolated / "root", arrays=tiny_arrays(seed=1), gz=False)
    monkeypatch.setenv("MIMLIB_DATA", os.pathsep.join([str(isolated / "env1"), str(isolated / "env2")]))
    from_env = I.load_idx("mnist", checksums=None)
    assert from_env.folder == isolated / "env2" / "mnist"
    np.testing.assert_array_equal(from_env.train_images, tiny_arrays(seed=2)["train_images"])
    from_root = I.load_idx("mnist", isolated / "root", checksums=None)  # raw, not gzipped
    assert from_root.folder == isolated / "root" / "mnist"
    np.testing.assert_array_equal(from_root.test_labels, tiny_arrays(seed=1)["test_labels"])


def test_user_cache_is_searched(isolated):
    write_dataset(isolated / "xdg-cache" / "mimlib", name="fashion-mnist")
    assert I.load_idx("fashion-mnist", checksums=None).folder == isolated / "xdg-cache" / "mimlib" / "fashion-mnist"


def test_not_found_lists_every_place(isolated, monkeypatch):
    monkeypatch.setenv("MIMLIB_DATA", str(isolated / "env"))
    paths = write_dataset(isolated / "root")
    paths["test_labels"].unlink()  # an incomplete folder
    with pytest.raises(FileNotFoundError) as info:
        I.load_idx("mnist", isolated / "root")
    msg = str(info.value)
    for place in (isolated / "root" / "mnist", isolated / "env" / "mnist",
                  isolated / "xdg-cache" / "mimlib" / "mnist", Path("/usr/share/datasets/mnist")):
        assert str(place) in msg
    assert "incomplete: missing t10k-labels-idx1-ubyte" in msg
    assert "MIMLIB_DATA" in msg and "download=True" in msg
    with pytest.raises(ValueError, match="unknown dataset"):
        I.load_idx("cifar10")


def test_download_from_a_local_mirror(isolated, monkeypatch):
    """download=True, exercised offline through a file:// mirror."""
    mirror = isolated / "mirror"
    paths = write_dataset(mirror)
    for role, filename in I.FILES.items():
        monkeypatch.setitem(I.MD5, f"mnist/{filename}",
                            hashlib.md5(gzip.decompress(paths[role].read_bytes())).hexdigest())
    monkeypatch.setitem(I.URLS, "mnist", (mirror / "mnist").as_uri() + "/")
    raw = I.load_idx("mnist", download=True)
    assert raw.folder == isolated / "xdg-cache" / "mimlib" / "mnist"
    np.testing.assert_array_equal(raw.train_images, tiny_arrays()["train_images"])
    assert sorted(p.name for p in raw.folder.iterdir()) == sorted(f + ".gz" for f in I.FILES.values())
    # a mirror serving a wrong file: refused, nothing left in place
    monkeypatch.setitem(I.MD5, "mnist/t10k-labels-idx1-ubyte", "0" * 32)
    with pytest.raises(I.DataIntegrityError, match="failed verification"):
        I.download_dataset("mnist", isolated / "dest")
    assert not (isolated / "dest" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list((isolated / "dest" / "mnist").glob("*.part"))


# ----------------------------------------------------------------------------- integrity errors


def test_truncated_file(isolated):
    paths = write_dataset(isolated, gz=False)
    data = paths["train_images"].read_bytes()
    paths["train_images"].write_bytes(data[:-5])
    with pytest.raises(I.DataIntegrityError, match=r"train-images-idx3-ubyte: truncated"):
        I.load_idx("mnist", isolated, checksums=None)
    paths["train_images"].write_bytes(data[:10])
    with pytest.raises(I.DataIntegrityError, match="truncated IDX header"):
        I.read_idx(paths["train_images"], checksums=None)
    paths["train_images"].write_bytes(data + b"\0")
    with pytest.raises(I.DataIntegrityError, match="too long"):
        I.read_idx(paths["train_images"], checksums=None)


def test_truncated_gzip(isolated):
    paths = write_dataset(isolated)
    blob = paths["test_images"].read_bytes()
    paths["test_images"].write_bytes(blob[: len(blob) // 2])
    with pytest.raises(I.DataIntegrityError, match=r"t10k-images-idx3-ubyte\.gz: not a valid gzip"):
        I.load_idx("mnist", isolated, checksums=None)


def test_corrupt_gzip(isolated):
    paths = write_dataset(isolated)
    blob = bytearray(paths["train_labels"].read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # breaks the deflate stream or its CRC
    paths["train_labels"].write_bytes(bytes(blob))
    with pytest.raises(I.DataIntegrityError, match=r"train-labels-idx1-ubyte\.gz: not a valid gzip"):
        I.read_idx(paths["train_labels"], checksums=None)
    paths["train_labels"].write_bytes(b"this is not gzip at all")
    with pytest.raises(I.DataIntegrityError, match="not a valid gzip"):
        I.read_idx(paths["train_labels"], checksums=None)


def test_bad_magic(isolated):
    paths = write_dataset(isolated, gz=False)
    data = bytearray(paths["train_images"].read_bytes())
    data[2] = 0x0D  # float type code instead of ubyte
    paths["train_images"].write_bytes(bytes(data))
    with pytest.raises(I.DataIntegrityError, match=r"train-images-idx3-ubyte: bad IDX magic"):
        I.load_idx("mnist", isolated, checksums=None)
    # a labels file (1 dim) where images (3 dims) are expected
    paths["train_images"].write_bytes(paths["train_labels"].read_bytes())
    with pytest.raises(I.DataIntegrityError, match="bad IDX magic number 0x00000801"):
        I.load_idx("mnist", isolated, checksums=None)


def test_checksums(isolated):
    paths = write_dataset(isolated, gz=False)
    # tiny files under the official names: the default table rejects them
    with pytest.raises(I.DataIntegrityError, match=r"MD5 of the decompressed content is .* expected"):
        I.load_idx("mnist", isolated)
    # an explicit table: a matching checksum passes, a wrong one names file and both digests
    table = {f"mnist/{f}": hashlib.md5(paths[r].read_bytes()).hexdigest() for r, f in I.FILES.items()}
    assert I.load_idx("mnist", isolated, checksums=table).train_images.shape == (30, 28, 28)
    table["mnist/t10k-labels-idx1-ubyte"] = "f" * 32
    with pytest.raises(I.DataIntegrityError, match=r"t10k-labels-idx1-ubyte: MD5 .* expected f{32}"):
        I.load_idx("mnist", isolated, checksums=table)
    # a file the table does not know is refused too
    other = isolated / "elsewhere" / "my-images"
    other.parent.mkdir()
    other.write_bytes(idx_bytes(np.zeros((2, 3, 3))))
    with pytest.raises(I.DataIntegrityError, match="no known checksum"):
        I.read_idx(other)
    assert I.read_idx(other, checksums=None).shape == (2, 3, 3)


def test_count_mismatch(isolated):
    arrays = tiny_arrays()
    arrays["test_labels"] = arrays["test_labels"][:-1]
    write_dataset(isolated, arrays=arrays)
    with pytest.raises(I.DataIntegrityError, match="10 images but .* 9 labels"):
        I.load_idx("mnist", isolated, checksums=None)


# ----------------------------------------------------------------------------- binarisation and batches


@pytest.fixture
def tiny(isolated):
    write_dataset(isolated, arrays=tiny_arrays(n_train=250, n_test=40))
    return I.load_binarized("mnist", isolated, n_val=50, seed=7, batch_size=64, checksums=None)


def test_split_shapes(tiny):
    assert tiny.train_u8.shape == (200, 1, 28, 28) and tiny.val.shape == (50, 1, 28, 28)
    assert tiny.test.shape == (40, 1, 28, 28) and tiny.num_batches() == 4
    assert tiny.num_batches(drop_last=True) == 3
    x = tiny.train_intensity()
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_epoch_covers_data_once(tiny):
    batches = list(tiny.train_batches(0))
    assert [len(y) for _, y in batches] == [64, 64, 64, 8]
    x, _ = batches[0]
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == sorted(tiny.train_labels.tolist())
    assert [len(y) for _, y in tiny.train_batches(0, drop_last=True)] == [64, 64, 64]


def test_dynamic_binarisation_reproducible_per_epoch(tiny):
    e3 = [x for x, _ in tiny.train_batches(3)]
    again = [x for x, _ in tiny.train_batches(3)]  # e.g. a run resumed at epoch 3
    assert all(torch.equal(a, b) for a, b in zip(e3, again))
    e4 = [x for x, _ in tiny.train_batches(4)]
    assert not torch.equal(e3[0], e4[0])
    # same images in a different epoch get different bits: re-binarised, not only re-shuffled
    def bits_by_image(epoch):
        out = {}
        order = torch.randperm(tiny.n_train, generator=I.epoch_generator(tiny.seed, epoch))
        for (x, _), idx in zip(tiny.train_batches(epoch), order.split(64)):
            out.update({int(i): xi for i, xi in zip(idx, x)})
        return out
    b3, b4 = bits_by_image(3), bits_by_image(4)
    assert sum(torch.equal(b3[i], b4[i]) for i in range(tiny.n_train)) == 0
    # another run seed, another stream
    other = dataclasses.replace(tiny, seed=8)
    assert not torch.equal(next(iter(other.train_batches(3)))[0], e3[0])


def test_fixed_binarisation_identical(tiny, isolated):
    a = I.fixed_binarization(tiny.val_u8, seed=5)
    b = I.fixed_binarization(tiny.val_u8, seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, I.fixed_binarization(tiny.val_u8, seed=6))
    # the split's val/test bits do not depend on the training seed, nor on the call
    other = I.split_and_binarize(I.load_idx("mnist", isolated, checksums=None), n_val=50, seed=123)
    assert torch.equal(other.val, tiny.val) and torch.equal(other.test, tiny.test)
    assert not torch.equal(tiny.val, tiny.test[: len(tiny.val)])


def test_binarised_mean_matches_intensity():
    g = torch.Generator().manual_seed(0)
    p = torch.linspace(0, 1, 11).repeat_interleave(20000)
    x = I.binarize(p, g)
    means = x.view(11, -1).mean(1)
    assert torch.allclose(means, torch.linspace(0, 1, 11), atol=0.012)
    assert means[0] == 0 and means[-1] == 1
    u8 = torch.full((2000, 28, 28), 77, dtype=torch.uint8)
    assert abs(I.fixed_binarization(u8, 0).mean().item() - 77 / 255) < 3e-3
    with pytest.raises(TypeError):
        I.to_intensity(torch.zeros(3, 28, 28))
