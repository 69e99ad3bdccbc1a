"""The card's three checks: the shapes, the loss's dtypes, and that a short run
reduces the loss. `python -m pytest test_mnist.py` runs them in seconds.

They need model.py, data.py and train.py's train_one_epoch, with torch and
pytest: no real MNIST, no fixtures from elsewhere. A teaching assistant can copy
a student's model.py in and run this file as a grading check: any correct MLP
passes (one or more hidden layers, any usual non-linearity), built as
MLP(widths), and a failure names the likely mistake. The rest of the project's
tests are in tests/.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import data
from model import MLP
from train import train_one_epoch

pytestmark = pytest.mark.lesson  # python -m pytest -m lesson

# Hidden widths as a student's MLP takes them: one hidden layer (the lecture's), two.
WIDTHS = [[64], [64, 32]]


def easy_digits(count, seed=0):
    """`count` images [count, 1, 28, 28] and int64 labels: ten fixed random
    patterns, one per class, with noise. Easy to learn, so a few steps of
    training show whether learning works."""
    generator = torch.Generator().manual_seed(seed)
    patterns = (torch.rand(10, 1, 28, 28, generator=generator) > 0.75).float()
    labels = torch.arange(count) % 10
    images = patterns[labels] + 0.2 * torch.randn(count, 1, 28, 28, generator=generator)
    return images, labels


# ----------------------------------------------------------------------------
# 1. Shapes: images in, one logit per class out

@pytest.mark.parametrize("widths", WIDTHS)
def test_shapes_images_in_one_logit_per_class_out(widths):
    """A batch of images [B, 1, 28, 28] gives logits [B, 10], one row per image,
    whatever the hidden layers; a batch of one image too."""
    model = MLP(widths)
    for batch in (64, 1):
        logits = model(torch.randn(batch, 1, 28, 28))
        assert logits.shape == (batch, 10), (
            f"MLP({widths}) gave {tuple(logits.shape)} for {batch} images: expected "
            f"({batch}, 10). Flatten each image to 784 numbers (x.flatten(1), not x.view(-1) "
            f"or squeeze()) and end with nn.Linear(last width, 10)")
        assert logits.dtype == torch.float32


@pytest.mark.parametrize("widths", WIDTHS)
def test_the_hidden_layers_are_the_widths_asked_for(widths):
    """MLP([64, 32]) has two hidden layers, 784 -> 64 -> 32 -> 10: its linear
    layers, in the order forward uses them, are those shapes."""
    model = MLP(widths)
    linear = [module for module in model.modules() if isinstance(module, nn.Linear)]
    shapes = [(layer.in_features, layer.out_features) for layer in linear]
    expected = list(zip([28 * 28, *widths], [*widths, 10]))
    assert shapes == expected, (
        f"MLP({widths})'s linear layers are {shapes}, expected {expected}: one nn.Linear "
        f"per hidden width, then one to the 10 classes")


@pytest.mark.parametrize("widths", WIDTHS)
def test_the_model_returns_logits_not_probabilities(widths):
    """nn.CrossEntropyLoss applies log-softmax itself: the model's outputs are
    logits, any real numbers. Probabilities (a softmax at the end) are softmaxed
    twice by the loss, and learning stalls."""
    torch.manual_seed(0)
    outputs = MLP(widths)(torch.randn(32, 1, 28, 28))
    row_sums = outputs.sum(dim=1)
    probabilities = bool((outputs >= 0).all() and torch.allclose(row_sums, torch.ones(32)))
    assert not probabilities, (
        "every row of the outputs is positive and sums to 1: the model returns "
        "probabilities. Return the logits (the last nn.Linear's output, no softmax): "
        "nn.CrossEntropyLoss applies log-softmax itself, and argmax needs no softmax")


# ----------------------------------------------------------------------------
# 2. The loss's dtypes: float logits [N, C], int64 class labels [N]

def test_the_loss_takes_float_logits_and_int64_class_labels():
    """nn.CrossEntropyLoss wants logits [N, C] and class indices [N] of dtype
    int64 (torch's default for whole numbers)."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 1])
    assert labels.dtype == torch.int64
    expected = -(torch.log_softmax(logits, dim=1)[[0, 1], [0, 1]]).mean()
    assert torch.allclose(nn.CrossEntropyLoss()(logits, labels), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
def test_class_labels_of_another_dtype_are_refused(dtype):
    """Float or int32 labels of shape [N] are refused outright (the message
    differs between torch versions; recent ones take uint8 too, older ones not:
    data.py makes MNIST's uint8 labels int64)."""
    logits, labels = torch.randn(2, 3), torch.tensor([0, 1], dtype=dtype)
    with pytest.raises(RuntimeError, match="target|Long|expected scalar type"):
        F.cross_entropy(logits, labels)


def test_float_targets_of_shape_n_by_c_are_probabilities_not_labels():
    """Float targets [N, C] mean something else: each row is a probability
    distribution over the classes. One-hot rows equal the labels; others do not."""
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    one_hot = F.one_hot(labels, 3).float()
    assert torch.allclose(F.cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))
    uniform = torch.full((4, 3), 1 / 3)
    assert not torch.allclose(F.cross_entropy(logits, uniform), F.cross_entropy(logits, labels))


def test_the_data_brings_float32_images_and_int64_labels():
    """MNIST's files store pixels and labels as uint8; data.py's batches bring
    normalized float32 images and int64 labels, as the loss wants."""
    images, labels = torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8), \
        (torch.arange(100) % 10).to(torch.uint8)
    dataset = data.as_dataset(images, labels, "cpu", {"mean": 0.1307, "std": 0.3081})
    batch_images, batch_labels = next(iter(data.make_loader(dataset, 32, shuffle=False)))
    assert batch_images.shape == (32, 1, 28, 28) and batch_images.dtype == torch.float32
    assert batch_labels.shape == (32,) and batch_labels.dtype == torch.int64
    assert torch.equal(batch_labels, labels[:32].long())


# ----------------------------------------------------------------------------
# 3. A short run reduces the loss

@pytest.mark.parametrize("widths", WIDTHS)
def test_a_short_run_reduces_the_loss(widths):
    """Five epochs of train_one_epoch on 600 easy images, with a stock
    DataLoader and Adam, bring the loss on them from about ln(10) = 2.3 to
    below half of it. Every usual non-linearity gets far below (ReLU, GELU and
    tanh near 0, two sigmoid layers near a tenth of the start); a model that
    returns probabilities cannot (the loss is then at least 1.46)."""
    torch.manual_seed(0)
    images, labels = easy_digits(600)
    train_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=20, shuffle=True)
    model = MLP(widths)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_on_the_images():
        with torch.no_grad():
            return loss_fn(model(images), labels).item()

    before = loss_on_the_images()
    for _ in range(5):
        train_loss, train_accuracy = train_one_epoch(model, train_loader, loss_fn, optimizer)
    after = loss_on_the_images()
    assert 1.5 < before < 4, (
        f"the loss before training is {before:.2f}, expected near ln(10) = 2.30 for a fresh "
        f"model: are the outputs logits of 10 classes?")
    assert after < 0.5 * before, (
        f"five epochs took the loss from {before:.2f} to {after:.2f} only, not below half: "
        f"is every layer used in forward, a non-linearity between them, optimizer.zero_grad() "
        f"called each step, and are the outputs logits (no softmax)?")
    assert train_accuracy > 0.9, f"training accuracy {train_accuracy:.0%} after five epochs"
