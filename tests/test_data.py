"""data.py: the Dataset, its batches, the normalization and the validation split."""


import pytest
import torch
from conftest import (
    CPU,
    split,
)

import data
from model import MLP

# ----------------------------------------------------------------------------
# The model and the data set

def test_the_lecture_mlp_is_relu_of_w1_x_plus_b1_then_w2_h_plus_b2():
    model = MLP([16])
    x = torch.randn(3, 1, 28, 28)
    first, second = model.hidden_layers[0], model.output_layer
    h = torch.relu(x.flatten(1) @ first.weight.T + first.bias)
    assert torch.allclose(model(x), h @ second.weight.T + second.bias, atol=1e-6)


def test_batches_are_of_the_batch_size_and_each_epoch_has_every_image(mnist):
    train_set, val_set = split(mnist, 100)
    assert (len(train_set), len(val_set)) == (500, 100)
    batches = list(data.make_loader(train_set, 64, shuffle=True,
                                    generator=torch.Generator().manual_seed(0)))
    assert [len(labels) for _, labels in batches] == [64] * 7 + [52]
    images, labels = batches[0]
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,)
    assert labels.min() >= 0 and labels.max() <= 9
    # Every image exactly once per epoch, in a new order each epoch.
    loader = data.make_loader(train_set, 64, shuffle=True,
                              generator=torch.Generator().manual_seed(0))
    epoch_labels = [torch.cat([labels for _, labels in loader]) for _ in range(2)]
    assert sorted(epoch_labels[0].tolist()) == sorted(train_set.labels.tolist())


def test_the_dataset_answers_one_index_or_a_batch_of_indices(mnist):
    train_set, _ = split(mnist, 100)
    image, label = train_set[3]
    assert image.shape == (1, 28, 28) and label.shape == () and label.dtype == torch.int64
    batch_images, batch_labels = train_set[torch.tensor([3, 5])]
    assert torch.equal(batch_images[0], image) and torch.equal(batch_labels[0], label)
    # torch's stock DataLoader, one image at a time ...
    stock = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
    images, labels = next(iter(stock))
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,)
    assert labels.dtype == torch.int64
    # ... and the batch sampler given as a batch_sampler, also one at a time.
    sampler = data.BatchIndices(len(train_set), 64, CPU, shuffle=False)
    images, labels = next(iter(torch.utils.data.DataLoader(train_set, batch_sampler=sampler)))
    assert torch.equal(images, train_set.images[:64])
    assert torch.equal(labels, train_set.labels[:64])


def test_shuffling_changes_each_epoch_and_evaluation_is_in_order(mnist):
    train_set, _ = split(mnist, 0)
    shuffled = data.make_loader(train_set, 600, shuffle=True,
                                generator=torch.Generator().manual_seed(0))
    first, second = (next(iter(shuffled))[1] for _ in range(2))
    assert not torch.equal(first, second)
    assert sorted(first.tolist()) == sorted(second.tolist())
    in_order = data.make_loader(train_set, 600, shuffle=False)
    assert torch.equal(next(iter(in_order))[1], train_set.labels)


def test_images_are_normalized_by_the_training_pixels_statistics(mnist):
    pixels = torch.zeros(2, 28, 28, dtype=torch.uint8)
    pixels[0, :, 7:] = 255  # three quarters white, a quarter black, over both images
    pixels[1] = 255
    statistics = data.pixel_statistics(pixels)
    assert statistics["mean"] == pytest.approx(0.875)
    assert statistics["std"] == pytest.approx(
        torch.tensor([0.0] * 196 + [1.0] * 1372).std().item(), rel=1e-6)
    images = data.normalize(pixels, statistics)
    assert images.shape == (2, 1, 28, 28)
    assert images.mean().item() == pytest.approx(0, abs=1e-6)
    assert images.std().item() == pytest.approx(1, rel=1e-5)
    # train.py: the statistics of the training images only, not the validation ones.
    images, _ = data.load_split(mnist, "mnist", "train")
    train_set, val_set, normalization = data.train_val_sets(mnist, "mnist", 100, 0, CPU)
    assert train_set.images.mean().item() == pytest.approx(0, abs=1e-5)
    assert normalization != data.pixel_statistics(images)


def test_validation_split_is_chosen_by_the_seed_and_disjoint(mnist):
    def labels_and_images(seed):
        train_set, val_set = split(mnist, 100, seed)
        return train_set.images, val_set.images

    train_a, val_a = labels_and_images(0)
    train_b, val_b = labels_and_images(1)
    assert torch.equal(val_a, labels_and_images(0)[1])
    assert not torch.equal(val_a, val_b)
    # No validation image is also a training image.
    flat_train, flat_val = train_a.flatten(1), val_a.flatten(1)
    assert not (flat_val[:, None, :] == flat_train[None, :, :]).all(dim=2).any()
