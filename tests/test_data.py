
import pytest
import torch
from PIL import Image

from dsco.data import load_dataset, stratified_split
from dsco.errors import DscoError


def test_split_is_a_pure_function_of_the_seed():
    labels = torch.arange(5).repeat_interleave(40)
    a = stratified_split(labels, 50, seed=3)
    b = stratified_split(labels, 50, seed=3)
    c = stratified_split(labels, 50, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])


def test_split_is_stratified_disjoint_and_complete():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    train, test = stratified_split(labels, 20, seed=0)
    assert len(test) == 20 and len(train) == 80
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert torch.bincount(labels[test]).tolist() == [12, 6, 2]


def test_mnist5k_is_4000_train_and_1000_test_of_ten_digits():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.class_names == [str(i) for i in range(10)]
    assert train.image_shape == (1, 28, 28) and 0 <= train.images.min() and train.images.max() <= 1
    assert min(test.class_counts()) >= 80


def test_image_folder_loads_classes_from_subfolders(folder):
    s = load_dataset(str(folder))
    assert s.class_names == ["a", "b", "c"] and len(s) == 36 and s.image_shape == (1, 8, 8)
    assert s.class_counts() == [12, 12, 12]


def test_test_split_of_a_folder_needs_test_dataset(folder):
    with pytest.raises(DscoError, match="--test-dataset"):
        load_dataset(str(folder), "test")


def test_missing_path_is_named(tmp_path):
    with pytest.raises(DscoError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"))


def test_empty_class_folder_is_named(folder):
    (folder / "d").mkdir()
    with pytest.raises(DscoError, match=r"class folder .*d is empty"):
        load_dataset(str(folder))


def test_corrupt_image_fails_or_is_skipped(folder, caplog):
    (folder / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DscoError, match="corrupt or unreadable image .*bad.png"):
        load_dataset(str(folder))
    s = load_dataset(str(folder), on_bad_image="skip")
    assert len(s) == 36 and "bad.png" in caplog.text


def test_non_image_file_is_refused(folder):
    (folder / "b" / "notes.txt").write_text("hello")
    with pytest.raises(DscoError, match="not an image file"):
        load_dataset(str(folder))


def test_mixed_modes_and_sizes_are_converted(folder, caplog):
    Image.new("RGB", (16, 12), (255, 0, 0)).save(folder / "c" / "big.png")
    s = load_dataset(str(folder))
    assert s.image_shape == (3, 8, 8) and len(s) == 37
    assert "mixed image modes or sizes" in caplog.text


def test_unknown_dataset_name_lists_the_valid_ones():
    with pytest.raises(DscoError, match="valid names are mnist5k"):
        load_dataset("imagenot")


def test_torchvision_dataset_needs_a_root_and_never_downloads_unasked(tmp_path):
    with pytest.raises(DscoError, match="--data-root"):
        load_dataset("cifar10")
    with pytest.raises(DscoError, match="--download"):
        load_dataset("mnist", data_root=str(tmp_path))


def test_a_decompression_bomb_is_a_bad_image_like_any_other(folder, monkeypatch):
    from PIL import Image

    Image.new("L", (64, 64)).save(folder / "a" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64x64 is then over twice the limit, as 20000^2 is; the 8x8 images stay under it
    with pytest.raises(DscoError, match="corrupt or unreadable image .*huge.png"):
        load_dataset(str(folder))
    s = load_dataset(str(folder), on_bad_image="skip")
    assert len(s) == 36
