"""Header-only image size, the truncation check, listing and pairing."""

import pytest
from PIL import Image

from taoflow.datasets.images import IMAGE_EXTENSIONS, image_size, list_images, pair_images_labels
from taoflow.errors import DataError
from tests.conftest import write_image, write_text


@pytest.mark.parametrize("name", ["a.jpg", "b.jpeg", "c.png", "D.JPG", "e.PNG"])
def test_size_matches_pil(tmp_path, name):
    path = write_image(tmp_path / name, 37, 23)
    assert image_size(path) == (37, 23)
    with Image.open(path) as im:
        assert image_size(path) == im.size


def test_progressive_jpeg_and_exif_segment(tmp_path):
    path = tmp_path / "p.jpg"
    Image.new("RGB", (50, 30), (10, 20, 30)).save(path, progressive=True, exif=Image.Exif())
    assert image_size(path) == (50, 30)


def test_content_decides_format_not_extension(tmp_path):
    png = write_image(tmp_path / "x.png", 12, 9)
    mislabeled = tmp_path / "x_really_png.jpg"
    mislabeled.write_bytes(png.read_bytes())
    assert image_size(mislabeled) == (12, 9)


@pytest.mark.parametrize("name", ["t.jpg", "t.png"])
def test_truncated_image_is_an_error_naming_the_file(tmp_path, name):
    path = write_image(tmp_path / name, 40, 30)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(DataError, match="truncated or corrupt") as exc:
        image_size(path)
    assert exc.value.path == str(path)


@pytest.mark.parametrize("name", ["z.jpg", "z.png"])
def test_trailing_zero_padding_is_accepted(tmp_path, name):
    path = write_image(tmp_path / name, 40, 30)
    path.write_bytes(path.read_bytes() + b"\x00" * 100)
    assert image_size(path) == (40, 30)


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"GIF89a......", "not a JPEG or PNG"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "no frame header"),
])
def test_unreadable_headers(tmp_path, content, match):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        image_size(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read image"):
        image_size(tmp_path / "nope.jpg")


def test_list_images_sorted_case_insensitive_and_ignores_others(tmp_path):
    for name in ["b.JPG", "a.png", "c.jpeg"]:
        write_image(tmp_path / name)
    write_text(tmp_path / "notes.txt", "x")
    write_text(tmp_path / "._a.jpg", "AppleDouble junk")
    (tmp_path / "sub.jpg").mkdir()
    images = list_images(tmp_path)
    assert list(images) == ["a", "b", "c"]
    assert images["b"].name == "b.JPG"
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png")


def test_list_images_rejects_duplicate_stems(tmp_path):
    write_image(tmp_path / "x.jpg")
    write_image(tmp_path / "x.png")
    with pytest.raises(DataError, match="x.jpg, x.png"):
        list_images(tmp_path)


def test_pairing_reports_every_kind_of_mismatch(tmp_path):
    images, labels = tmp_path / "image", tmp_path / "label"
    write_image(images / "ok.jpg")
    write_image(images / "nolabel.jpg")
    write_image(images / "dup.jpg")
    write_image(images / "dup.png")
    for stem in ["ok", "orphan", "dup"]:
        write_text(labels / f"{stem}.txt", "")
    pairs, problems = pair_images_labels(images, labels)
    assert [p[0] for p in pairs] == ["ok"]
    messages = {p["path"].rsplit("/", 1)[-1]: p["error"] for p in problems}
    assert set(messages) == {"dup.jpg", "nolabel.jpg", "orphan.txt"}
    assert "no label file" in messages["nolabel.jpg"]
    assert "no image" in messages["orphan.txt"]
