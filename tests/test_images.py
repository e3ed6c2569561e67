"""engine/images.py on real files: hostile, odd and ordinary images built in tmp_path."""

from __future__ import annotations

import gc
import os
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import hostile_images as hostile
from smolvlm_desktop.engine import images
from smolvlm_desktop.engine.images import (ALLOWED_FORMATS, IMAGE_EXTENSIONS, allowed_formats,
                                           load_image, load_thumbnail, probe_image)
from smolvlm_desktop.engine.types import ImageError

CASES = hostile._CASES  # name -> (builder, expected error substring or None)


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    hostile.make_hostile_folder(folder)
    return folder


# --- every hostile case: the right outcome, through every entry point -------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_case_outcome(hostile_dir: Path, name: str) -> None:
    expected = CASES[name][1]
    if expected is None:
        loaded = load_image(hostile_dir / name)
        assert loaded.image.mode == "RGB"
        assert loaded.path == str(hostile_dir / name)
        assert min(loaded.image.size) > 0
    else:
        with pytest.raises(ImageError) as caught:
            load_image(hostile_dir / name)
        assert expected in str(caught.value)
        assert str(caught.value).startswith(f"{name}: ")


@pytest.mark.parametrize("name", sorted(CASES))
def test_thumbnail_has_the_same_outcome_and_is_small(hostile_dir: Path, name: str) -> None:
    expected = CASES[name][1]
    if expected is None:
        thumb = load_thumbnail(hostile_dir / name, 32)
        assert thumb.image.mode == "RGB" and max(thumb.image.size) <= 32
    else:
        with pytest.raises(ImageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            load_thumbnail(hostile_dir / name, 32)


def test_make_hostile_folder_returns_every_file_it_made(tmp_path: Path) -> None:
    cases = hostile.make_hostile_folder(tmp_path / "h")
    assert sorted(cases) == sorted(p.name for p in (tmp_path / "h").iterdir())
    assert None in cases.values() and hostile.TOO_LARGE in cases.values()


# --- what the loaded pixels look like -------------------------------------------------------


def test_exif_orientation_6_swaps_the_size(hostile_dir: Path) -> None:
    loaded = load_image(hostile_dir / "rotated_exif6.jpg")
    width, height = hostile.ROTATED_STORED_SIZE
    assert loaded.original_size == (width, height)
    assert loaded.image.size == (height, width)


def test_rgba_is_composited_on_white(hostile_dir: Path) -> None:
    pixel = load_image(hostile_dir / "rgba.png").image.getpixel((4, 4))
    assert all(abs(a - b) <= 1 for a, b in zip(pixel, hostile.RGBA_ON_WHITE))


def test_palette_transparency_becomes_white(hostile_dir: Path) -> None:
    image = load_image(hostile_dir / "palette_transparent.png").image
    assert image.getpixel((2, 2)) == (255, 255, 255)  # transparent half (black in the palette)
    assert image.getpixel((12, 2)) == hostile.PALETTE_OPAQUE


def test_16_bit_grey_keeps_its_brightness(hostile_dir: Path) -> None:
    # Pillow's own I;16 -> L conversion clips: this mid grey would come out white.
    assert load_image(hostile_dir / "grey16.png").image.getpixel((3, 3)) == (128, 128, 128)


def test_cmyk_jpeg_becomes_red_rgb(hostile_dir: Path) -> None:
    red, green, blue = load_image(hostile_dir / "cmyk.jpg").image.getpixel((5, 5))
    assert red > 230 and green < 30 and blue < 30


def test_animated_gif_uses_the_first_frame_and_says_so(hostile_dir: Path) -> None:
    loaded = load_image(hostile_dir / "animated.gif")
    assert loaded.image.getpixel((0, 0)) == hostile.ANIMATED_FIRST
    assert f"animated ({hostile.ANIMATED_FRAMES} frames): first frame used" in loaded.notes


def test_png_named_jpg_loads_with_a_note(hostile_dir: Path) -> None:
    loaded = load_image(hostile_dir / "png_named.jpg")
    assert loaded.format == "PNG"
    assert loaded.notes == ["the file is PNG although its name ends in .jpg"]


def test_non_ascii_name_loads(hostile_dir: Path) -> None:
    loaded = load_image(hostile_dir / "café_日本.png")
    assert loaded.image.getpixel((0, 0)) == (200, 100, 50)
    assert loaded.path.endswith("café_日本.png")


def test_large_jpeg_is_reduced_while_decoding(hostile_dir: Path) -> None:
    loaded = load_image(hostile_dir / "large.jpg")
    assert loaded.original_size == hostile.LARGE_JPEG_SIZE
    assert loaded.image.size == (4100, 500)  # 1/2 scale: long edge still >= 4096
    assert any(note.startswith("reduced while decoding from 8200×1000") for note in loaded.notes)


def test_draft_keeps_the_long_edge_at_least_the_target_for_a_panorama(hostile_dir: Path) -> None:
    # A square request would never reduce an 8:1 panorama (Pillow scales by the smaller ratio).
    loaded = load_image(hostile_dir / "large.jpg", target_edge=1000)
    assert loaded.image.size == (1025, 125)


def test_target_edge_none_decodes_full_size(hostile_dir: Path) -> None:
    loaded = load_image(hostile_dir / "large.jpg", target_edge=None)
    assert loaded.image.size == hostile.LARGE_JPEG_SIZE and loaded.notes == []


@pytest.mark.parametrize(("target", "size"), [(64, 32), (20, 32), (16, 16), (4, 4)])
def test_jpeg_reduction_is_by_whole_factors_of_at_least_the_target(
        hostile_dir: Path, target: int, size: int) -> None:
    loaded = load_image(hostile_dir / "cmyk.jpg", target_edge=target)  # 32×32 on disk
    assert loaded.image.size == (size, size)


@pytest.mark.parametrize(("mode", "array", "expected"), [
    ("F", np.full((4, 4), 0.5, np.float32), 128),  # float 0..1
    ("F", np.full((4, 4), 1000.0, np.float32), 0),  # outside any range, flat: black
    ("I", np.full((4, 4), 128 * 257, np.int32), 128),  # 32-bit holding 16-bit values
    ("I", np.full((4, 4), 200, np.int32), 200),  # 32-bit holding 8-bit values
])
def test_wide_greyscale_modes_map_to_8_bits(tmp_path: Path, mode: str, array: np.ndarray,
                                            expected: int) -> None:
    path = tmp_path / "wide.tif"
    Image.fromarray(array).save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    assert load_image(path).image.getpixel((1, 1)) == (expected,) * 3


def test_wide_greyscale_out_of_range_is_stretched(tmp_path: Path) -> None:
    path = tmp_path / "science.tif"
    Image.fromarray(np.array([[-5.0, 5.0]], np.float32)).save(path)
    image = load_image(path).image
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((1, 0)) == (255, 255, 255)


@pytest.mark.parametrize(("mode", "colour", "expected"), [
    ("LA", (0, 0), (255, 255, 255)),  # transparent black on white
    ("LA", (60, 255), (60, 60, 60)),
    ("1", 1, (255, 255, 255)),
    ("L", 77, (77, 77, 77)),
])
def test_other_modes_become_rgb(tmp_path: Path, mode: str, colour: object,
                                expected: tuple[int, int, int]) -> None:
    path = tmp_path / f"{mode}.png"
    Image.new(mode, (4, 4), colour).save(path)  # type: ignore[arg-type]
    assert load_image(path).image.getpixel((1, 1)) == expected


def test_multi_page_tiff_says_page_not_frame(tmp_path: Path) -> None:
    path = tmp_path / "pages.tif"
    pages = [Image.new("RGB", (8, 8), c) for c in ((1, 2, 3), (4, 5, 6))]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    loaded = load_image(path)
    assert loaded.notes == ["multi-page (2 pages): first page used"]
    assert loaded.image.getpixel((0, 0)) == (1, 2, 3)


# --- refusals --------------------------------------------------------------------------------


def test_bomb_messages_name_the_limit_and_the_limit_is_unchanged(hostile_dir: Path) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    for name in ("bomb.png", "over_limit.png"):
        with pytest.raises(ImageError, match=f"exceeds the safety limit of {limit:,}"):
            load_image(hostile_dir / name)
        with pytest.raises(ImageError, match="image too large"):
            probe_image(hostile_dir / name)
    assert Image.MAX_IMAGE_PIXELS == limit


def test_over_limit_refused_even_if_the_warning_filter_is_lost_simulated(
        hostile_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """catch_warnings is not thread-safe: another thread may restore filters mid-open. Here
    the 'error' filter is never installed and the warning is ignored; the loader must still
    refuse, by its own pixel count."""
    real = warnings.simplefilter

    def keep_ignoring(action: str, category: type[Warning] = Warning, *args: object) -> None:
        if category is not Image.DecompressionBombWarning:
            real(action, category, *args)  # type: ignore[arg-type]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        monkeypatch.setattr(images.warnings, "simplefilter", keep_ignoring)
        with pytest.raises(ImageError, match=r"over_limit.png: image too large: \d+×\d+ pixels"):
            load_image(hostile_dir / "over_limit.png")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="^nothing.jpg: file not found$"):
        load_image(tmp_path / "nothing.jpg")
    with pytest.raises(ImageError, match="file not found"):
        probe_image(tmp_path / "nothing.jpg")


def test_broken_symlink_is_not_found(tmp_path: Path) -> None:
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "deleted.jpg")
    with pytest.raises(ImageError, match="file not found"):
        load_image(link)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipe_is_refused_without_hanging(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)  # opening this for reading would block forever
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(pipe)


def test_permission_denied_simulated_by_failing_open(hostile_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as root, where chmod blocks nothing; make Pillow's open() fail instead."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "builtins", types.SimpleNamespace(open=refuse))
    with pytest.raises(ImageError, match="^rgba.png: permission denied$"):
        load_image(hostile_dir / "rgba.png")


def test_allow_list_excludes_other_decoders() -> None:
    formats = allowed_formats()
    assert set(ALLOWED_FORMATS) <= set(formats)
    assert not {"ICO", "PSD", "EPS", "PDF", "SPIDER"} & set(formats)
    assert {".jpg", ".png", ".webp", ".gif", ".bmp", ".tif"} <= IMAGE_EXTENSIONS


def test_heic_without_its_optional_decoder_says_what_is_missing(tmp_path: Path) -> None:
    if "HEIF" in allowed_formats():
        pytest.skip("pillow-heif is installed here")
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")  # a HEIC's first box
    with pytest.raises(ImageError, match="needs the optional 'pillow-heif' package"):
        load_image(path)


def test_broken_exif_orientation_keeps_the_picture_simulated(
        hostile_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow copes with the broken EXIF in the hostile folder; simulate one it chokes on."""
    def choke(image: Image.Image, **kwargs: object) -> Image.Image:
        raise SyntaxError("not a TIFF IFD")

    monkeypatch.setattr(ImageOps, "exif_transpose", choke)
    loaded = load_image(hostile_dir / "rotated_exif6.jpg")
    assert loaded.image.size == hostile.ROTATED_STORED_SIZE  # shown as stored
    assert loaded.notes == ["EXIF orientation unreadable: shown as stored"]


def test_loaded_image_outlives_the_closed_file(hostile_dir: Path) -> None:
    image = load_image(hostile_dir / "png_named.jpg").image
    gc.collect()
    assert image.copy().getpixel((0, 0)) == (10, 20, 30)


# --- probe and handles -----------------------------------------------------------------------


def test_probe_reads_format_and_stored_size_only(hostile_dir: Path) -> None:
    assert probe_image(hostile_dir / "large.jpg") == ("JPEG", hostile.LARGE_JPEG_SIZE)
    assert probe_image(hostile_dir / "rotated_exif6.jpg") == ("JPEG", hostile.ROTATED_STORED_SIZE)
    assert probe_image(hostile_dir / "png_named.jpg")[0] == "PNG"
    # the truncated JPEG's header is intact: probing succeeds, decoding does not
    assert probe_image(hostile_dir / "truncated.jpg") == ("JPEG", (256, 256))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors via /proc")
def test_no_file_handle_outlives_a_call(hostile_dir: Path) -> None:
    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.disable()  # a leaked handle must show up now, not be closed by a collection later
    try:
        before = open_descriptors()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            for name in CASES:
                for call in (load_image, probe_image, lambda p: load_thumbnail(p, 16)):
                    try:
                        call(hostile_dir / name)
                    except ImageError:
                        pass
            assert open_descriptors() == before
            gc.collect()
        assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    finally:
        gc.enable()
