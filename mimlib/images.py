"""MNIST and Fashion-MNIST: IDX files on a search path, checked, split and binarised.

The image experiments (paper section 5, appendix D.2) use the standard IDX
files of MNIST and Fashion-MNIST with the split of the VampPrior code the paper
builds on: the first 50,000 images of the train file for training, the last
10,000 for validation, and the 10,000 of the test file for testing.
Training batches are *dynamically* binarised (every pixel re-drawn from
Bernoulli(intensity) each epoch); validation and test sets are binarised once
with a fixed seed, so every evaluation sees the same bits.

Where the files are looked for, in this order (see :func:`search_path`):

1. an explicit ``root`` argument;
2. the environment variable ``MIMLIB_DATA`` (several folders separated by
   ``os.pathsep``);
3. the user cache, ``$XDG_CACHE_HOME/mimlib`` or ``~/.cache/mimlib``
   (where ``download=True`` puts the files);
4. Debian's ``/usr/share/datasets`` (package ``dataset-fashion-mnist``).

Each candidate folder is ``<dir>/<name>/`` with ``name`` in ``{"mnist",
"fashion-mnist"}`` holding the four standard files, gzipped (``.gz``) or not.
Every file is parsed strictly (magic number, header, exact length) and its
*decompressed* bytes are checked against the MD5 table :data:`MD5`; anything
wrong raises :class:`DataIntegrityError` naming the file. Nothing is ever
returned silently from a truncated or corrupt file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch

__all__ = [
    "DATASETS", "FILES", "MD5", "URLS", "DataIntegrityError",
    "search_path", "cache_dir", "find_dataset", "read_idx", "load_idx",
    "download_dataset", "RawImages", "BinarizedImages", "to_intensity", "binarize",
    "fixed_binarization", "epoch_generator", "split_and_binarize", "load_binarized",
]

#: The two datasets this module knows.
DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist")

#: The four files of each dataset (without ``.gz``), by role.
FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: MD5 of the *decompressed* bytes of every known file, keyed ``"<dataset>/<file>"``
#: (gzip wrappers differ between mirrors; the content does not).
MD5: dict[str, str] = {
    "mnist/train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "mnist/train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "mnist/t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "mnist/t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    "fashion-mnist/train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "fashion-mnist/train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "fashion-mnist/t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "fashion-mnist/t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

#: Canonical mirrors (each serves the four ``.gz`` files under the same names).
URLS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

_DEBIAN_DIR = Path("/usr/share/datasets")
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one these files use


class DataIntegrityError(ValueError):
    """An IDX file is truncated, corrupt, malformed or fails its checksum."""


# ----------------------------------------------------------------------------- search path


def cache_dir() -> Path:
    """The user cache folder: ``$XDG_CACHE_HOME/mimlib``, else ``~/.cache/mimlib``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "mimlib"


def search_path(root: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for ``<dir>/<name>/``, in order (module docstring)."""
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root).expanduser())
    env = os.environ.get("MIMLIB_DATA", "")
    dirs += [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    dirs += [cache_dir(), _DEBIAN_DIR]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")


def _file_in(folder: Path, filename: str) -> Path | None:
    """``folder/filename`` raw or gzipped (raw preferred), or None."""
    for candidate in (folder / filename, folder / (filename + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _how_to_provide(name: str) -> str:
    names = ", ".join(f"{f}[.gz]" for f in FILES.values())
    return (f"Provide the files ({names}) in a folder '<dir>/{name}/' and either pass "
            f"root='<dir>', or set MIMLIB_DATA=<dir> (several folders separated by "
            f"{os.pathsep!r}), or copy them to {cache_dir() / name}; with internet access, "
            f"download=True fetches them from {URLS[name]} into the user cache.")


def find_dataset(name: str, root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Paths of the four files of ``name``, from the first folder on the search
    path that holds all four (raw or ``.gz``).

    Raises FileNotFoundError listing every folder looked at (and which files an
    incomplete folder lacks) and how to provide the files.
    """
    _check_name(name)
    looked: list[str] = []
    for d in search_path(root):
        folder = d / name
        found = {role: _file_in(folder, f) for role, f in FILES.items()}
        if all(p is not None for p in found.values()):
            return found  # type: ignore[return-value]
        if folder.is_dir():
            missing = [FILES[r] for r, p in found.items() if p is None]
            dirs = [str(c) for f in missing for c in (folder / f, folder / (f + ".gz")) if c.is_dir()]
            missing = [f for f in missing if not (folder / f).is_dir() and not (folder / (f + ".gz")).is_dir()]
            why = []
            if dirs:
                why.append(f"a directory where a data file should be: {', '.join(dirs)} (remove it or put "
                           f"the file there)")
            if missing:
                why.append(f"missing {', '.join(missing)}")
            looked.append(f"  {folder}  (incomplete: {'; '.join(why)})")
        else:
            looked.append(f"  {folder}  (not found)")
    raise FileNotFoundError(f"{name} IDX files not found. Looked in:\n" + "\n".join(looked)
                            + "\n" + _how_to_provide(name))


# ----------------------------------------------------------------------------- IDX parsing


_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The (decompressed) content of ``path``; gzip errors become DataIntegrityError saying how to fix them."""
    if path.is_dir():
        raise DataIntegrityError(f"{path} is a directory where the IDX data file should be; remove it and put "
                                 f"the file there")
    raw = path.read_bytes()
    if path.suffix != ".gz":
        if raw[:2] == _GZIP_MAGIC:
            raise DataIntegrityError(f"{path} is gzip-compressed but its name does not end in .gz; rename it to "
                                     f"{path.name}.gz (or decompress it in place: mv {path.name} {path.name}.gz && gunzip {path.name}.gz)")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        if raw[:2] != _GZIP_MAGIC and len(raw) >= 4 and raw[:3] == b"\x00\x00\x08":
            fix = (f"it looks like an uncompressed IDX file: rename it to {path.name[:-3]} (without .gz), or "
                   f"compress it: gzip {path.name[:-3]}")
        elif raw[:2] == _GZIP_MAGIC:
            fix = "the gzip stream is truncated or corrupt (an interrupted download?): delete it and provide " \
                  "the file again (download=True fetches it)"
        else:
            start = raw[:64].lstrip().lower()
            what = " (it starts like an HTML page: a download error page saved as the file?)" if start.startswith(
                (b"<!doctype", b"<html", b"<?xml")) else ""
            fix = f"it is not gzip data{what}: delete it and provide the file again (download=True fetches it)"
        raise DataIntegrityError(f"{path}: not a valid gzip file ({err}); {fix}") from err


def _known_key(path: Path) -> str:
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    return f"{path.parent.name}/{stem}"


def _parse_idx(data: bytes, path: Path, expected_ndim: int | None,
               expected_md5: str | None, key: str) -> np.ndarray:
    """Checks of :func:`read_idx` on already decompressed bytes (``path`` names them)."""
    if len(data) < 4:
        raise DataIntegrityError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != _IDX_UBYTE or ndim == 0 or (expected_ndim is not None and ndim != expected_ndim):
        want = f"0x000008{expected_ndim:02x}" if expected_ndim is not None else "0x000008<ndim>"
        raise DataIntegrityError(f"{path}: bad IDX magic number 0x{data[:4].hex()} (expected {want}); "
                                 f"not an IDX file of unsigned bytes: delete it and provide the file again "
                                 f"(download=True fetches it)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataIntegrityError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "too long"
        raise DataIntegrityError(f"{path}: {kind}: {len(data)} bytes, the header {dims} "
                                 f"implies {expected}")
    if expected_md5 is not None:
        digest = hashlib.md5(data).hexdigest()
        if digest != expected_md5:
            raise DataIntegrityError(f"{path}: MD5 of the decompressed content is {digest}, "
                                     f"expected {expected_md5}; the file is corrupt or not "
                                     f"the official {key}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(path: str | os.PathLike, *, expected_ndim: int | None = None,
             checksums: Mapping[str, str] | None = MD5) -> np.ndarray:
    """Read one IDX file of unsigned bytes (raw or ``.gz``) into a writable uint8 array.

    Checks, each failing with a :class:`DataIntegrityError` that names the file:
    a valid gzip stream (for ``.gz``); the magic number (two zero bytes, type
    0x08 = ubyte, then the number of dimensions, ``expected_ndim`` if given);
    the exact length ``header + prod(dims)``; and, unless ``checksums`` is None,
    the MD5 of the decompressed bytes against ``checksums["<folder>/<file>"]``
    (the folder being the dataset name, the file name without ``.gz``). A file
    missing from ``checksums`` is an error too: only ``checksums=None`` (used by
    the tests on tiny files) skips verification.
    """
    path = Path(path)
    key = _known_key(path)
    expected_md5 = None
    if checksums is not None:
        if key not in checksums:
            raise DataIntegrityError(f"{path}: no known checksum for {key!r} (known: "
                                     f"{sorted(checksums)}); only checksums=None skips verification")
        expected_md5 = checksums[key]
    return _parse_idx(_read_bytes(path), path, expected_ndim, expected_md5, key)


@dataclass(frozen=True)
class RawImages:
    """The four arrays of one dataset, as stored: uint8 images (N, rows, cols), uint8 labels (N,)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    folder: Path


def load_idx(name: str, root: str | os.PathLike | None = None, *, download: bool = False,
             checksums: Mapping[str, str] | None = MD5) -> RawImages:
    """Find (see :func:`find_dataset`), read and verify the four files of ``name``.

    ``download=True`` fetches the canonical files into the user cache when they
    are found nowhere on the search path. ``checksums=None`` skips the MD5 check
    (tests with tiny files only); the structural checks always run. Images and
    labels of each split must agree in count.
    """
    _check_name(name)
    try:
        paths = find_dataset(name, root)
    except FileNotFoundError:
        if not download:
            raise
        download_dataset(name)
        paths = find_dataset(name, root)
    arrays = {role: read_idx(p, expected_ndim=3 if role.endswith("images") else 1, checksums=checksums)
              for role, p in paths.items()}
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise DataIntegrityError(f"{paths[split + '_images']} has {n_img} images but "
                                     f"{paths[split + '_labels']} has {n_lab} labels")
    return RawImages(name=name, folder=paths["train_images"].parent, **arrays)


def download_dataset(name: str, dest: str | os.PathLike | None = None, *,
                     timeout: float = 60.0) -> Path:
    """Fetch the four ``.gz`` files of ``name`` from :data:`URLS` into ``dest/name``
    (default: the user cache), verify them, and return that folder.

    Each file is downloaded to a temporary name and moved into place only after
    its decompressed content has passed the checks of :func:`read_idx` with
    the MD5 table, so an interrupted or corrupted download never leaves a file
    that looks complete. Files already present are kept (and verified on load).
    """
    _check_name(name)
    folder = Path(dest if dest is not None else cache_dir()).expanduser() / name
    folder.mkdir(parents=True, exist_ok=True)
    for filename in FILES.values():
        target = folder / (filename + ".gz")
        if target.is_file():
            continue
        url = URLS[name] + filename + ".gz"
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=filename + ".", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
            key = f"{name}/{filename}"
            try:
                data = gzip.decompress(tmp.read_bytes())
                _parse_idx(data, target, None, MD5[key], key)
            except (OSError, EOFError, zlib.error, DataIntegrityError) as err:
                raise DataIntegrityError(f"download of {url} failed verification: {err}") from err
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
    return folder


# ----------------------------------------------------------------------------- binarisation


def to_intensity(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> float32 intensities in [0, 1], shape (N, 1, 28, 28)."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {t.dtype}")
    if t.dim() == 3:
        t = t.unsqueeze(1)
    return t.to(torch.float32).div_(255.0)


def binarize(intensity: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of Bernoulli(intensity) per pixel, as float 0/1 (same shape and device).

    ``u < p`` with ``u ~ U[0, 1)`` from ``generator``, so the bits are a pure
    function of the generator state: P(1) = p exactly, p = 0 gives 0, p = 1 gives 1.
    """
    u = torch.rand(intensity.shape, generator=generator, device=intensity.device,
                   dtype=intensity.dtype if intensity.is_floating_point() else torch.float32)
    return (u < intensity).to(u.dtype)


def _seed_from(*entropy: int) -> int:
    """A 63-bit seed from integers via numpy's SeedSequence (well mixed, order-sensitive)."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator for epoch ``epoch`` of a run seeded ``seed``: a function of
    (seed, epoch) only, so a run resumed at epoch e sees the same batches."""
    return torch.Generator().manual_seed(_seed_from(seed, epoch, 0x5EED))


def fixed_binarization(images: torch.Tensor | np.ndarray, seed: int) -> torch.Tensor:
    """Static binarisation: the same bits for the same (images, seed) on every call."""
    g = torch.Generator().manual_seed(_seed_from(seed, 0xF1BED))
    return binarize(to_intensity(images), g)


# ----------------------------------------------------------------------------- splits and batches


@dataclass
class BinarizedImages:
    """The 50k / 10k / 10k split, ready for training a Bernoulli-decoder model.

    All image tensors have shape (N, 1, 28, 28); labels are int64 (N,).

    * ``train_u8``: training images as stored (uint8), binarised afresh in every
      epoch by :meth:`train_batches`;
    * ``val`` / ``test``: fixed binarisations (float 0/1, seed ``eval_seed``);
    * ``val_u8`` / ``test_u8``: their uint8 intensities (for grey-level plots).
    """

    name: str
    train_u8: torch.Tensor
    train_labels: torch.Tensor
    val_u8: torch.Tensor
    val_labels: torch.Tensor
    test_u8: torch.Tensor
    test_labels: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    seed: int = 0
    batch_size: int = 100

    @property
    def n_train(self) -> int:
        """Number of training images."""
        return int(self.train_u8.shape[0])

    def num_batches(self, batch_size: int | None = None, drop_last: bool = False) -> int:
        """Batches per training epoch."""
        b = batch_size or self.batch_size
        return self.n_train // b if drop_last else -(-self.n_train // b)

    def train_intensity(self) -> torch.Tensor:
        """All training images as float intensities in [0, 1] (N, 1, 28, 28)."""
        return to_intensity(self.train_u8)

    def train_batches(self, epoch: int, batch_size: int | None = None, *, drop_last: bool = False,
                      device: torch.device | str | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled, dynamically binarised training batches ``(x, y)`` of epoch ``epoch``.

        One generator, :func:`epoch_generator` (seed, epoch), draws the
        permutation and then every batch's bits in order, so the epoch is a
        pure function of (seed, epoch, batch_size): resuming at epoch e gives
        identical batches, and different epochs give different bits.
        ``x`` is float 0/1 of shape (B, 1, 28, 28) on ``device``.
        """
        b = batch_size or self.batch_size
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(self.n_train, generator=g)
        stop = self.num_batches(b, drop_last) * b
        for start in range(0, stop, b):
            idx = order[start:min(start + b, self.n_train)]
            x = binarize(to_intensity(self.train_u8[idx]), g)
            y = self.train_labels[idx]
            if device is not None:
                x, y = x.to(device), y.to(device)
            yield x, y


def split_and_binarize(raw: RawImages, *, n_val: int = 10_000, seed: int = 0, eval_seed: int = 0,
                       batch_size: int = 100) -> BinarizedImages:
    """The split of the reference code: validation = the *last* ``n_val`` images
    of the train file, training = the rest, test = the test file; validation and
    test binarised once with ``eval_seed`` (independent of the training ``seed``,
    so runs with different seeds are scored on the same bits)."""
    n = len(raw.train_images)
    if not 0 <= n_val < n:
        raise ValueError(f"n_val={n_val} must be in [0, {n}) for {n} training images")
    images = torch.from_numpy(raw.train_images)
    labels = torch.from_numpy(raw.train_labels.astype(np.int64))
    cut = n - n_val
    val_u8, test_u8 = images[cut:].unsqueeze(1), torch.from_numpy(raw.test_images).unsqueeze(1)
    return BinarizedImages(
        name=raw.name,
        train_u8=images[:cut].unsqueeze(1), train_labels=labels[:cut],
        val_u8=val_u8, val_labels=labels[cut:],
        test_u8=test_u8, test_labels=torch.from_numpy(raw.test_labels.astype(np.int64)),
        val=fixed_binarization(val_u8, _seed_from(eval_seed, 1)),
        test=fixed_binarization(test_u8, _seed_from(eval_seed, 2)),
        seed=seed, batch_size=batch_size)


def load_binarized(name: str, root: str | os.PathLike | None = None, *, seed: int = 0,
                   eval_seed: int = 0, n_val: int = 10_000, batch_size: int = 100,
                   download: bool = False,
                   checksums: Mapping[str, str] | None = MD5) -> BinarizedImages:
    """:func:`load_idx` then :func:`split_and_binarize`: the data of the image chapters."""
    raw = load_idx(name, root, download=download, checksums=checksums)
    return split_and_binarize(raw, n_val=n_val, seed=seed, eval_seed=eval_seed, batch_size=batch_size)
