"""data.RandomDistortion: the training images' random distortions."""

import math

import pytest
import torch
from conftest import (
    mnist_test_set,
    run,
    split,
    timeless,
)

import data
import train

# ----------------------------------------------------------------------------
# Data augmentation

def distortion(seed=0, background=0.0, **strengths):
    """train.py's distortion, by default of its default strengths, for images whose
    black pixels are `background`."""
    return data.RandomDistortion(seed, "cpu", {"mean": -background, "std": 1.0},
                                 **{**data.DISTORTION_DEFAULTS, **strengths})


def test_augmentation_keeps_shape_and_dtype_and_changes_the_images(mnist):
    images = mnist_test_set(mnist).images[:32]
    augmented = distortion(background=images.min().item(), elastic_alpha=8.0)(images)
    assert augmented.shape == images.shape and augmented.dtype == torch.float32
    assert not torch.allclose(augmented, images, atol=1e-3)
    # Background stays background: nothing darker than black appears.
    assert augmented.min() >= images.min() - 1e-5


def test_each_image_gets_its_own_random_transform():
    one_image = torch.zeros(1, 1, 28, 28)
    one_image[..., 10:18, 12:16] = 2.0
    batch = one_image.repeat(8, 1, 1, 1)
    for strengths in (dict(), dict(rotation=0, scale=0, shift=0, elastic_alpha=8.0)):
        augmented = distortion(**strengths)(batch)
        differences = (augmented[1:] - augmented[0]).abs().flatten(1).amax(dim=1)
        assert (differences > 1e-3).all(), strengths


def test_shear_leans_vertical_strokes_and_nothing_else():
    """A vertical line, sheared alone, becomes a straight line that leans by up
    to --shear degrees, each image its own way; its middle row stays put."""
    line = torch.zeros(64, 1, 28, 28)
    line[..., 4:24, 13:15] = 1.0
    sheared = distortion(rotation=0, scale=0, shift=0, shear=30)(line)
    rows = torch.arange(4, 24, dtype=torch.float32)
    ink = sheared[:, 0, 4:24]  # [64, 20 rows, 28 columns]
    columns = (ink * torch.arange(28.0)).sum(2) / ink.sum(2)  # where each row's ink is
    slope = ((rows - rows.mean()) * (columns - columns.mean(1, keepdim=True))).sum(1) / (
        (rows - rows.mean()) ** 2).sum()
    straight = columns - columns.mean(1, keepdim=True) - slope[:, None] * (rows - rows.mean())
    assert (columns.mean(1) - 13.5).abs().max() < 0.1  # through the middle, as before ...
    assert straight.abs().max() < 0.1  # still a straight line ...
    assert slope.abs().max() <= math.tan(math.radians(30)) + 0.01  # ... leaning at most 30 degrees
    assert (slope > 0.3).any() and (slope < -0.3).any()  # both ways
    assert torch.allclose(sheared.sum((1, 2, 3)), line.sum((1, 2, 3)), rtol=0.02)


def test_without_shear_the_distortions_draw_the_same_random_numbers():
    """--shear 0 draws nothing for it: the rest of the distortion, and the
    generator's state after it, are those of a run with no shear at all."""
    no_shear = distortion(shear=0.0)
    no_shear(torch.randn(8, 1, 28, 28))
    draws = torch.Generator().manual_seed(0)
    for shape in ((8,), (8,), (2, 8)):  # angle, zoom, then the x and y shifts
        torch.rand(*shape, generator=draws)
    assert torch.equal(no_shear.generator.get_state(), draws.get_state())
    sheared = distortion(shear=10.0)  # where the shear's own draw would show
    sheared(torch.randn(8, 1, 28, 28))
    assert not torch.equal(sheared.generator.get_state(), draws.get_state())


@pytest.mark.parametrize("alpha, sigma, pixels", [(34, 5, 1.2), (20, 4, 0.9)])
def test_elastic_alpha_moves_a_pixel_as_far_as_the_help_says(alpha, sigma, pixels):
    """The recipes' settings: alpha is not pixels; after the smoothing, alpha 34
    with sigma 5 moves a pixel 1.2 pixels on average (its help, the README)."""
    field = distortion(elastic_alpha=alpha, elastic_sigma=sigma).elastic_field(4000)
    moved = (field * data.IMAGE_SIZE / 2).norm(dim=1)  # grid_sample's units to pixels
    assert moved.mean().item() == pytest.approx(pixels, abs=0.05)


def test_zero_strength_is_the_identity():
    images = torch.randn(16, 1, 28, 28)
    unchanged = distortion(rotation=0, scale=0, shift=0, elastic_alpha=0)(images)
    assert torch.allclose(unchanged, images, atol=1e-5)


def test_augmentation_is_seeded():
    images = torch.randn(4, 1, 28, 28)
    assert torch.equal(distortion(seed=3)(images), distortion(seed=3)(images))
    assert not torch.equal(distortion(seed=3)(images), distortion(seed=4)(images))


def test_evaluation_and_validation_are_never_augmented(mnist, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(data.RandomDistortion, "__call__",
                        lambda self, images: calls.append(len(images)) or images)
    train.main(["--data-dir", mnist, "--epochs", "1", "--val-size", "100", "--augment",
                "--batch-size", "100", "--device", "cpu", "--out", str(tmp_path / "m.pt")])
    assert calls == [100] * 5  # the five training batches, and nothing else
    assert split(mnist, 100)[1].transform is None
    assert mnist_test_set(mnist).transform is None


def test_clean_epochs_end_the_run_on_undistorted_images(capsys, mnist, tmp_path):
    def train_three_epochs(name, *flags):
        out = tmp_path / name
        code, _, err = run(capsys, train, "--data-dir", mnist, "--epochs", 3, "--val-size", 100,
                           "--elastic-alpha", 8, "--device", "cpu", "--out", out, *flags)
        assert code == 0, err
        checkpoint = torch.load(out, weights_only=True)
        return timeless(checkpoint["metrics"]), checkpoint["state_dict"]

    distorted, _ = train_three_epochs("distorted.pt")
    last_clean, _ = train_three_epochs("last_clean.pt", "--clean-epochs", 1)
    assert last_clean[:2] == distorted[:2] and last_clean[2] != distorted[2]
    all_clean, weights = train_three_epochs("all_clean.pt", "--clean-epochs", 3)
    never_distorted, expected = train_three_epochs("never.pt", "--no-augment")
    assert all_clean == never_distorted
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
