"""The shard converter (trainable.shards), its format and inputs, and the streamed source (trainable.stream)."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainable.images import square_rgb
from trainable.shard_format import INDEX, ShardError, check_shard, open_shards, read_offsets
from trainable.shards import main
from trainable.stream import ShardStream

ROOT = Path(__file__).resolve().parents[1]


def _colored(seed: int, size: int = 40) -> Image.Image:
    """A random image with plenty of color (never gray)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    pixels = np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    pixels[..., int(rng.integers(0, 3))] = 255
    pixels[..., (int(base.argmax()) + 1) % 3] //= 4
    return Image.fromarray(pixels)


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _plain_tree(root: Path, count: int, size: int = 40) -> Path:
    for i in range(count):
        path = root / f"class{i % 3}" / "deeper" / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(_colored(i, size)))
    return root


def _convert(src: Path, dst: Path, *extra: str) -> int:
    return main([str(src), str(dst), "--size", "32", "--shard-images", "4", "--workers", "1", "--quiet", *extra])


def _stored_images(dst: Path) -> list[np.ndarray]:
    """Every image the shards of dst hold, decoded to uint8 RGB."""
    index = open_shards(dst, checksum=True)
    images = []
    for path, _ in index.split("val") + index.split("train"):
        data = path.read_bytes()
        with open(path, "rb") as handle:
            offsets, start = read_offsets(handle, path)
        for a, b in zip(offsets[:-1], offsets[1:]):
            blob = data[start + a:start + b]
            images.append(np.frombuffer(blob, np.uint8).reshape(32, 32, 3) if index.codec == "raw"
                          else np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
    return images


# --- image modes ---------------------------------------------------------------------------------

def test_cmyk_gray_alpha_and_16_bit_become_the_right_rgb():
    cmyk = _jpeg(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=100)     # red in ink
    assert np.abs(square_rgb(cmyk, 8).astype(int) - [255, 0, 0]).max() <= 3
    gray = _png(Image.new("L", (16, 16), 77))
    assert (square_rgb(gray, 8) == 77).all()
    rgba = Image.new("RGBA", (16, 16), (0, 0, 255, 255))
    rgba.paste((0, 255, 0, 0), (8, 0, 16, 16))                 # green, fully transparent
    laid = square_rgb(_png(rgba), 16)
    assert (laid[:, :8] == [0, 0, 255]).all() and (laid[:, 8:] == 255).all()    # over white, not green
    deep = Image.fromarray(np.full((16, 16), 128 * 257, dtype=np.uint16))
    assert deep.mode.startswith("I")
    assert (square_rgb(_png(deep), 8) == 128).all()            # scaled, not clipped to 255


def test_tiny_and_large_images_come_out_at_the_size():
    assert square_rgb(_png(_colored(1, 3)), 32).shape == (32, 32, 3)
    assert square_rgb(_jpeg(_colored(2, 8).resize((2000, 1500))), 32).shape == (32, 32, 3)


# --- conversion ----------------------------------------------------------------------------------

def test_a_tree_of_odd_images_converts_and_names_what_it_skipped(tmp_path, capsys):
    src = _plain_tree(tmp_path / "src", 6)
    odd = src / "odd"
    odd.mkdir()
    (odd / "corrupt.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    (odd / "truncated.jpg").write_bytes(_jpeg(_colored(9, 64))[:300])
    (odd / "gray.png").write_bytes(_png(Image.new("L", (40, 40), 90)))
    (odd / "deep.png").write_bytes(_png(Image.fromarray(np.full((40, 40), 200 * 257, dtype=np.uint16))))
    (odd / "cmyk.jpg").write_bytes(_jpeg(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), quality=100))
    rgba = Image.new("RGBA", (40, 40), (0, 0, 255, 255))
    rgba.paste((0, 255, 0, 0), (20, 0, 40, 40))
    (odd / "alpha.png").write_bytes(_png(rgba))
    (odd / "tiny.png").write_bytes(_png(_colored(3, 3)))
    (odd / "large.jpg").write_bytes(_jpeg(_colored(4, 8).resize((2400, 1600))))
    assert _convert(src, tmp_path / "dst", "--codec", "raw") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "skipped 2 unreadable: odd/corrupt.jpg, odd/truncated.jpg" in out[0] and "dropped 2 gray" in out[0]
    index = open_shards(tmp_path / "dst", checksum=True)
    assert index.count("train") + index.count("val") == 6 + 4       # plain + cmyk, alpha, tiny, large
    images = _stored_images(tmp_path / "dst")
    means = [image.reshape(-1, 3).mean(0) for image in images]
    assert any(np.abs(m - [255, 0, 0]).max() < 4 for m in means)     # the CMYK red
    halves = [image for image in images if (image[:, :14] == [0, 0, 255]).all()]
    assert len(halves) == 1 and (halves[0][:, 18:] == 255).all()      # alpha laid over white


def test_places365_layout_reads_its_file_list_as_folder_and_as_tar(tmp_path):
    places = tmp_path / "places"
    names = [f"a/abbey/{i:08d}.jpg" for i in range(1, 6)] + [f"b/beach/{i:08d}.jpg" for i in range(1, 5)]
    for i, name in enumerate(names + ["z/unlisted/00000001.jpg"]):
        path = places / "data_256_standard" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(_colored(i, 32), quality=95))
    (places / "places365_train_standard.txt").write_text("".join(f"/{n} {i // 5}\n" for i, n in enumerate(names)))
    assert _convert(places, tmp_path / "from_folder") == 0
    tarred = tmp_path / "tarred"
    tarred.mkdir()
    (tarred / "places365_train_standard.txt").write_text((places / "places365_train_standard.txt").read_text())
    with tarfile.open(tarred / "train_256_places365standard.tar", "w") as tar:
        tar.add(places / "data_256_standard", arcname="data_256")
    assert _convert(tarred / "train_256_places365standard.tar", tmp_path / "from_tar") == 0
    folder, tar_index = open_shards(tmp_path / "from_folder"), open_shards(tmp_path / "from_tar")
    assert folder.settings["kind"] == "places365" and tar_index.settings["kind"] == "tar"
    assert folder.count("train") + folder.count("val") == len(names)          # the unlisted one left out
    assert {n: e["sha256"] for n, e in folder.shards.items()} == {n: e["sha256"] for n, e in tar_index.shards.items()}


def test_npz_and_cifar10_convert_and_a_second_run_checks_and_changes_nothing(tmp_path, capsys):
    images = np.stack([np.asarray(_colored(i, 32)) for i in range(10)])
    np.savez(tmp_path / "set.npz", images=images)
    assert _convert(tmp_path / "set.npz", tmp_path / "dst") == 0
    first = (tmp_path / "dst" / INDEX).read_text()
    assert _convert(tmp_path / "set.npz", tmp_path / "dst") == 0
    assert (tmp_path / "dst" / INDEX).read_text() == first and "nothing left to do" in capsys.readouterr().out
    assert json.loads(first)["settings"]["kind"] == "npz"
    cifar = tmp_path / "cifar10"                   # a CIFAR-10 folder in the form its cache takes
    cifar.mkdir()
    np.savez(cifar / "train.npz", images=images)
    assert _convert(cifar, tmp_path / "from_cifar") == 0
    from_cifar = open_shards(tmp_path / "from_cifar")
    assert from_cifar.settings["kind"] == "cifar10" and from_cifar.count("train") + from_cifar.count("val") == 10


def _run(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "trainable.shards", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
@pytest.mark.integration
def test_sigkill_then_the_same_command_gives_the_uninterrupted_index(tmp_path):
    """Killed when its first shard is on disk, then run again: the index and files of one
    uninterrupted run (made here by two workers: the worker count changes nothing either)."""
    src = _plain_tree(tmp_path / "src", 60)
    args = ["--size", "32", "--shard-images", "2", "--workers", "1", "--quiet"]
    killed = _run([str(src), str(tmp_path / "dst"), *args])
    dst = tmp_path / "dst"
    while killed.poll() is None and not list(dst.glob("*-*.bin")):    # the event: a first shard on disk
        pass
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not json.loads((dst / INDEX).read_text())["complete"]      # it died mid-conversion
    resumed = _run([str(src), str(dst), *args])
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    assert main([str(src), str(tmp_path / "whole"), *args[:-3], "--workers", "2", "--quiet"]) == 0
    assert (dst / INDEX).read_text() == (tmp_path / "whole" / INDEX).read_text()
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in (tmp_path / "whole").iterdir())
    open_shards(dst, checksum=True)


# --- bad input -----------------------------------------------------------------------------------

def _bad(capsys, src: Path, dst: Path, named: Path, *extra: str) -> str:
    assert _convert(src, dst, *extra) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(named) in lines[0] and captured.out == "", captured
    return lines[0]


def test_missing_empty_and_imageless_sources_fail_before_writing(tmp_path, capsys):
    dst = tmp_path / "dst"
    _bad(capsys, tmp_path / "nope", dst, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "empty folder" in _bad(capsys, tmp_path / "empty", dst, tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no pictures here")
    assert "holds no images" in _bad(capsys, tmp_path / "notes", dst, tmp_path / "notes")
    assert not dst.exists()


def test_dst_inside_src_and_a_foreign_dst_fail_before_writing(tmp_path, capsys):
    src = _plain_tree(tmp_path / "src", 3)
    assert "inside the source" in _bad(capsys, src, src / "shards", src / "shards")
    assert not (src / "shards").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    _bad(capsys, src, tmp_path / "busy", tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["mine.txt"]


def test_shards_of_another_format_version_are_refused(tmp_path, capsys):
    src = _plain_tree(tmp_path / "src", 6)
    dst = tmp_path / "dst"
    assert _convert(src, dst) == 0
    capsys.readouterr()
    body = json.loads((dst / INDEX).read_text())
    (dst / INDEX).write_text(json.dumps({**body, "version": 0}))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in dst.iterdir())
    assert "version 0" in _bad(capsys, src, dst, dst / INDEX)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in dst.iterdir()) == before
    with pytest.raises(ShardError, match="version 0"):
        ShardStream(dst, 2, 32)


def test_truncated_and_corrupt_shards_are_named(tmp_path, capsys):
    src = _plain_tree(tmp_path / "src", 10)
    dst = tmp_path / "dst"
    assert _convert(src, dst) == 0
    capsys.readouterr()
    shard = sorted(dst.glob("train-*.bin"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:-5])
    assert "truncated" in _bad(capsys, src, dst, shard)
    with pytest.raises(ShardError, match="truncated"):
        ShardStream(dst, 2, 32)
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert "corrupt" in _bad(capsys, src, dst, shard)
    with pytest.raises(ShardError, match="corrupt"):
        ShardStream(dst, 2, 32, checksum=True)
    shard.unlink()                                 # what the message says to do
    assert _convert(src, dst) == 0 and shard.read_bytes() == data


@pytest.mark.slow
@pytest.mark.integration
def test_a_full_disk_stops_with_one_line_and_the_same_command_finishes(tmp_path):
    """A file-size limit stands in for a full disk: a write past it fails with EFBIG."""
    src = _plain_tree(tmp_path / "src", 12)
    dst = tmp_path / "dst"
    args = [str(src), str(dst), "--size", "32", "--shard-images", "4", "--workers", "1", "--quiet", "--codec", "raw"]
    limit = ("import resource, signal, sys\n"
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000))\n"
             "from trainable.shards import main\n"
             "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", limit, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stdout == "", done
    assert len(done.stderr.strip().splitlines()) == 1 and "disk full" in done.stderr and str(dst) in done.stderr
    index = json.loads((dst / INDEX).read_text())
    assert not index["complete"] and len(index["shards"]) < 4        # it stopped at a shard too big
    assert sorted(p.name for p in dst.iterdir()) == sorted([INDEX, *index["shards"]])   # no temp file
    for name, entry in index["shards"].items():
        check_shard(dst / name, entry, checksum=True)                # what it wrote, it wrote whole
    assert main(args) == 0
    open_shards(dst, checksum=True)


# --- the streamed source -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    _plain_tree(root / "src", 30)
    assert _convert(root / "src", root / "dst", "--val-fraction", "0.1") == 0
    return root / "dst"


def test_stream_yields_lab_batches_and_a_fixed_val_set(shards):
    stream = ShardStream(shards, 4, 16, workers=0, seed=1)
    batches = list(stream)
    assert len(batches) == len(stream) == stream.train_count // 4 and stream.train_count == 27
    assert all(b.shape == (4, 3, 16, 16) and b.dtype == torch.float32 for b in batches)
    assert batches[0][:, 0].min() >= -1.001 and batches[0][:, 0].max() <= 1.001     # normalized L
    assert stream.val.shape == (3, 3, 16, 16) and stream.state_dict() == {"seed": 1, "epoch": 1, "batch": 0}
    again = list(stream)
    assert not torch.equal(again[0], batches[0])                      # a new epoch, a new order


def test_stream_resumes_at_the_exact_batch(shards):
    uninterrupted = ShardStream(shards, 4, 16, workers=0, seed=5)
    whole = list(uninterrupted) + list(uninterrupted)
    first = ShardStream(shards, 4, 16, workers=0, seed=5)
    iterator = iter(first)
    seen = [next(iterator) for _ in range(len(first))]       # all of epoch 0
    seen += [next(iter(first)) for _ in range(2)]                     # two batches into epoch 1
    state = first.state_dict()
    assert state == {"seed": 5, "epoch": 1, "batch": 2}
    resumed = ShardStream(shards, 4, 16, workers=1, seed=5)           # another worker count, same batches
    resumed.load_state_dict(state)
    seen += list(resumed)
    assert len(seen) == len(whole) and all(torch.equal(a, b) for a, b in zip(seen, whole))


def test_an_epoch_holds_every_training_image_once_as_lab_maybe_mirrored(shards):
    """Crops the size of the stored images are the images: each batch item is the Lab of one stored
    image or of its mirror, and an epoch of 9-image batches holds all 27 once."""
    from trainable.data import to_lab
    index = open_shards(shards)
    stored = _stored_images(shards)[index.count("val"):]
    lab = to_lab(np.stack(stored), "cpu")
    both = torch.cat([lab, lab.flip(-1)])
    stream = ShardStream(shards, 9, 32, workers=0, seed=2)
    seen = []
    for batch in stream:
        for image in batch:
            distance = (both - image).abs().flatten(1).amax(1)
            assert distance.min() < 1e-5
            seen.append(int(distance.argmin()) % len(lab))
    assert sorted(seen) == list(range(len(lab)))
