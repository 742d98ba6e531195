"""Raw loaders on tiny hand-made data in every layout, the gray filter, the split and the batch helpers."""
from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainable.cifar10 import load_cifar10
from trainable.config import DataConfig
from trainable.data import (GRAY_CHROMA, apply_flip, batch_indices, epoch_plan, load_data, load_test_split,
                            mean_chroma, split_indices, to_lab)
from trainable.datasets import load_folder, load_raw, make_synthetic
from trainable.download import DataError


def _noise(count: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def _write_batches(folder: Path, per_batch: int = 3) -> dict[str, np.ndarray]:
    """A cifar-10-batches-py folder in the official dict format; returns the NHWC images per split."""
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    images = {name: _noise(per_batch, seed) for seed, name in enumerate(names)}
    for name, nhwc in images.items():
        batch = {b"batch_label": name.encode(), b"labels": [0] * per_batch,
                 b"data": nhwc.transpose(0, 3, 1, 2).reshape(per_batch, 3072),
                 b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return {"train": np.concatenate([images[n] for n in names[:5]]), "test": images["test_batch"]}


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _pillow_decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def test_batches_folder_official_archive_and_npz_layouts(tmp_path):
    expected = _write_batches(tmp_path / "plain" / "cifar-10-batches-py")
    for path in (tmp_path / "plain", tmp_path / "plain" / "cifar-10-batches-py"):
        for split in ("train", "test"):
            np.testing.assert_array_equal(load_cifar10(str(path), split), expected[split])
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "plain" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    images = load_cifar10(str(archive_dir / "cifar-10-python.tar.gz"), "train")
    np.testing.assert_array_equal(images, expected["train"])
    assert (archive_dir / "cifar-10-batches-py" / "test_batch").is_file()
    assert sorted(p.name for p in archive_dir.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    np.testing.assert_array_equal(load_cifar10(str(archive_dir), "test"), expected["test"])
    npz_dir = tmp_path / "npz"
    npz_dir.mkdir()
    np.savez(npz_dir / "train.npz", images=expected["train"])
    np.savez(npz_dir / "test.npz", images=expected["test"][:2])
    assert load_cifar10(str(npz_dir), "test").shape == (2, 32, 32, 3)


def test_jpeg_tree_is_decoded_sorted_and_cached(tmp_path):
    blobs = {f"train/{label}/{i:04d}.jpg": _jpeg_bytes(_noise(1, 10 * j + i)[0])
             for j, label in enumerate(("cat", "airplane")) for i in range(3)}
    for name, blob in blobs.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(blob)
    expected = np.stack([_pillow_decode(blobs[name]) for name in sorted(blobs)])
    np.testing.assert_array_equal(load_cifar10(str(tmp_path), "train"), expected)
    assert (tmp_path / "train.npz").is_file() and not list(tmp_path.glob(".*"))
    for path in (tmp_path / "train").rglob("*.jpg"):
        path.unlink()
    np.testing.assert_array_equal(load_cifar10(str(tmp_path), "train"), expected)


def test_jpeg_mirror_archive_read_without_extracting(tmp_path):
    blobs = {f"{split}/dog/{i:04d}.jpg": _jpeg_bytes(_noise(1, i + 5 * (split == "test"))[0])
             for split in ("train", "test") for i in range(2)}
    with tarfile.open(tmp_path / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    test = load_cifar10(str(tmp_path), "test")
    np.testing.assert_array_equal(test, np.stack([_pillow_decode(blobs[f"test/dog/{i:04d}.jpg"]) for i in range(2)]))
    assert not (tmp_path / "test").exists() and (tmp_path / "test.npz").is_file()


def test_a_corrupt_jpeg_or_batch_is_a_data_error_naming_it(tmp_path):
    tree = tmp_path / "tree"
    (tree / "train" / "cat").mkdir(parents=True)
    (tree / "train" / "cat" / "0000.jpg").write_bytes(_jpeg_bytes(_noise(1, 0)[0]))
    (tree / "train" / "cat" / "0001.jpg").write_bytes(b"torn")
    with pytest.raises(DataError, match=r"cat/0001\.jpg: not a readable image"):
        load_cifar10(str(tree), "train")
    batches = tmp_path / "batches" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (batches / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8)}))   # not 3·32·32
    with pytest.raises(DataError, match="test_batch: not a CIFAR-10 python batch"):
        load_cifar10(str(tmp_path / "batches"), "test")


def test_missing_cifar10_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match="data.download=true") as err:
        load_cifar10(str(tmp_path), "train")
    assert str(tmp_path) in str(err.value) and "cifar-10-python.tar.gz" in str(err.value)
    assert "\n" not in str(err.value)


def test_npz_dataset_errors_name_the_file_or_key(tmp_path):
    np.savez(tmp_path / "good.npz", images=_noise(4, 0))
    assert load_raw(DataConfig(dataset="npz", path=str(tmp_path / "good.npz"))).shape == (4, 32, 32, 3)
    with pytest.raises(DataError, match="data.image_size"):
        load_raw(DataConfig(dataset="npz", path=str(tmp_path / "good.npz"), image_size=64))
    np.savez(tmp_path / "bad.npz", pixels=_noise(4, 0))
    with pytest.raises(DataError, match="no 'images' array"):
        load_raw(DataConfig(dataset="npz", path=str(tmp_path / "bad.npz")))
    with pytest.raises(DataError, match="no such file"):
        load_raw(DataConfig(dataset="npz", path=str(tmp_path / "absent.npz")))


def test_folder_resizes_shorter_side_and_center_crops(tmp_path):
    wide = np.zeros((32, 64, 3), dtype=np.uint8)
    wide[:, :16, 0], wide[:, 16:48, 1], wide[:, 48:, 2] = 255, 255, 255   # red | green | blue
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(wide).save(tmp_path / "a" / "wide.png")
    Image.fromarray(_noise(1, 1, size=20)[0]).save(tmp_path / "a" / "b" / "small.JPG")
    Image.fromarray(_noise(1, 2, size=40)[0]).convert("L").save(tmp_path / "gray.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_folder(str(tmp_path), 16)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    crop = images[1]                                  # sorted: a/b/small.JPG, a/wide.png, gray.png
    assert crop[8, 2].argmax() == 1 and crop[8, 13].argmax() == 1 and crop[8, 8, 1] > 240
    assert (images[2][..., 0] == images[2][..., 2]).all()
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_folder(str(tmp_path), 16)


def test_synthetic_is_deterministic_and_every_eighth_is_gray():
    first, again, other = make_synthetic(16, 32, 3), make_synthetic(16, 32, 3), make_synthetic(16, 32, 4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    chroma = mean_chroma(to_lab(first, "cpu"))
    assert (chroma < GRAY_CHROMA).nonzero().flatten().tolist() == [7, 15]
    assert chroma[chroma >= GRAY_CHROMA].min() > 3 * GRAY_CHROMA


def test_gray_and_near_gray_images_are_dropped(tmp_path):
    colored = _noise(6, 0)
    gray = np.repeat(_noise(3, 1)[..., :1], 3, axis=-1)
    near_gray = gray[:1].astype(np.int16) + np.random.default_rng(2).integers(-1, 2, gray[:1].shape)
    tinted = gray[:1].astype(np.int16) + np.array([12, 0, -12])      # clearly colored
    images = np.concatenate([colored, gray, np.clip(near_gray, 0, 255).astype(np.uint8),
                             np.clip(tinted, 0, 255).astype(np.uint8)])
    np.savez(tmp_path / "mixed.npz", images=images)
    data = load_data(DataConfig(dataset="npz", path=str(tmp_path / "mixed.npz"), val_fraction=0.2), "cpu")
    assert (len(data.train), len(data.val)) == (6, 1)
    assert mean_chroma(torch.cat([data.train, data.val])).min() >= GRAY_CHROMA


def test_split_sizes_limits_determinism_and_disjointness():
    cfg = DataConfig(dataset="synthetic", synthetic_size=64, val_fraction=0.25, split_seed=5)
    data = load_data(cfg, "cpu")                       # 64 images, 8 gray → 56: 14 val, 42 train
    assert data.train.shape == (42, 3, 32, 32) and data.val.shape == (14, 3, 32, 32)
    assert data.train.dtype == torch.float32
    train_rows = {row.numpy().tobytes() for row in data.train}
    assert not train_rows & {row.numpy().tobytes() for row in data.val}
    limited = load_data(replace(cfg, train_limit=10, val_limit=4), "cpu")
    assert (len(limited.train), len(limited.val)) == (10, 4)
    torch.testing.assert_close(limited.val, data.val[:4])
    torch.testing.assert_close(limited.train, data.train[:10])
    reseeded = load_data(replace(cfg, split_seed=6), "cpu")
    assert not torch.equal(torch.sort(reseeded.val.flatten(1).sum(1)).values, torch.sort(data.val.flatten(1).sum(1)).values)
    train, val = split_indices(10, 0.3, 0)
    assert len(val) == 3 and sorted(torch.cat([train, val]).tolist()) == list(range(10))


def test_lab_values_in_range():
    lab = to_lab(np.concatenate([make_synthetic(8, 32, 0), _noise(8, 0),
                                 np.array([[[[0, 0, 0]]], [[[255, 255, 255]]], [[[0, 0, 255]]]], np.uint8)
                                 .repeat(32, 1).repeat(32, 2)]), "cpu")
    assert lab[:, 0].min() >= -1 - 1e-4 and lab[:, 0].max() <= 1 + 1e-4
    assert lab[:, 1:].abs().max() <= 1.0
    assert lab[-3, 0].max() < -0.99 and lab[-2, 0].min() > 0.99 and lab[-1, 2].mean() < -0.9  # black, white, blue


def test_test_split_cifar10_uses_test_and_others_fall_back_to_val(tmp_path):
    np.savez(tmp_path / "train.npz", images=_noise(20, 0))
    np.savez(tmp_path / "test.npz", images=_noise(5, 1))
    cifar = DataConfig(dataset="cifar10", path=str(tmp_path), val_limit=1)
    torch.testing.assert_close(load_test_split(cifar, "cpu"), to_lab(_noise(5, 1), "cpu"))
    assert len(load_data(cifar, "cpu").train) == 18
    synthetic = DataConfig(dataset="synthetic", synthetic_size=40, val_limit=2)
    full_val = load_data(DataConfig(dataset="synthetic", synthetic_size=40), "cpu").val
    torch.testing.assert_close(load_test_split(synthetic, "cpu"), full_val)
    assert len(full_val) == 4


def test_planned_flip_flips_exactly_the_masked_items():
    batch = torch.arange(6 * 2 * 3 * 4, dtype=torch.float32).view(6, 2, 3, 4)
    _, flips = epoch_plan(6, 6, torch.Generator().manual_seed(1), True)
    mask = flips[0]
    flipped = apply_flip(batch, mask)
    assert 0 < int(mask.sum()) < 6
    torch.testing.assert_close(flipped[mask], batch[mask].flip(-1))
    torch.testing.assert_close(flipped[~mask], batch[~mask])


def test_batch_indices_cover_without_repeats():
    generator = torch.Generator().manual_seed(0)
    batches = batch_indices(10, 3, generator)
    assert [len(b) for b in batches] == [3, 3, 3]
    assert len(set(torch.cat(batches).tolist())) == 9 and max(torch.cat(batches).tolist()) <= 9
    assert sorted(torch.cat(batch_indices(9, 3, generator)).tolist()) == list(range(9))
    assert sorted(batch_indices(2, 4, generator)[0].tolist()) == [0, 1]
    assert batch_indices(10, 3, torch.Generator().manual_seed(0))[0].tolist() == batches[0].tolist()


def test_corrupt_official_archive_is_a_data_error(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"truncated download")
    with pytest.raises(DataError, match="cannot extract"):
        load_cifar10(str(tmp_path), "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]
