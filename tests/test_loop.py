"""The training loop's steps, train() and eval(), and the weights' moving average."""


import pytest
import torch
from conftest import (
    in_progress_checkpoint,
    run,
    split,
)

import data
import train
from checkpoint import load_checkpoint
from model import MLP, logits_and_labels
from train import MovingAverage

# ----------------------------------------------------------------------------
# The lesson itself: each step of the loop, and train() / eval()

class Batches(list):
    """A list of (images, labels) batches that train_one_epoch can take as its
    loader: it has the .dataset whose length is the number of images."""

    def __init__(self, batches):
        super().__init__(batches)
        self.dataset = range(sum(len(labels) for _, labels in batches))


def two_batch_loader(mnist):
    train_set, _ = split(mnist, 0)
    return Batches([(train_set.images[:50], train_set.labels[:50]),
                    (train_set.images[50:100], train_set.labels[50:100])])


def test_each_step_updates_with_that_batch_s_gradient_alone(mnist):
    """Plain SGD, two batches: w1 = w0 - lr g(w0, batch 1), w2 = w1 - lr g(w1,
    batch 2). Without step 2 (zero_grad) the second update would use the sum of
    both batches' gradients; without step 6 nothing would change."""
    torch.manual_seed(0)
    model = MLP([16])
    expected = MLP([16])
    expected.load_state_dict(model.state_dict())
    loss_fn = torch.nn.CrossEntropyLoss()
    lr = 0.5
    loader = two_batch_loader(mnist)
    for images, labels in loader:
        gradients = torch.autograd.grad(loss_fn(expected(images), labels),
                                        list(expected.parameters()))
        with torch.no_grad():
            for parameter, gradient in zip(expected.parameters(), gradients):
                parameter -= lr * gradient
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    train.train_one_epoch(model, loader, loss_fn, optimizer)
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter, dict(expected.named_parameters())[name], atol=1e-6), name


def test_train_one_epoch_returns_the_mean_loss_and_accuracy_of_its_batches(mnist):
    torch.manual_seed(0)
    model = MLP([16])
    loader = two_batch_loader(mnist)
    loss_fn = torch.nn.CrossEntropyLoss()
    # Nothing learns at lr 0, so the figures are those of the model as it is.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    logits = [model(images) for images, _ in loader]
    losses = [loss_fn(out, labels).item() for out, (_, labels) in zip(logits, loader)]
    right = sum((out.argmax(1) == labels).sum().item() for out, (_, labels) in zip(logits, loader))
    loss, accuracy = train.train_one_epoch(model, loader, loss_fn, optimizer)
    assert loss == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert accuracy == pytest.approx(right / 100)


def test_the_scheduler_steps_once_per_batch(mnist):
    model = MLP([16])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    train.train_one_epoch(model, two_batch_loader(mnist),
                          torch.nn.CrossEntropyLoss(), optimizer, scheduler)
    assert optimizer.param_groups[0]["lr"] == 0.25


def test_ema_averages_the_weights_after_every_step(mnist):
    """--ema d: the average starts at the weights after the first step, then
    a <- d a + (1 - d) w after each further step; the trained weights go on
    as they would without it."""
    torch.manual_seed(0)
    model, plain = MLP([16]), MLP([16])
    plain.load_state_dict(model.state_dict())
    loader, loss_fn = two_batch_loader(mnist), torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    averaged = MovingAverage(model, 0.9, optimizer)
    after_each_step = []
    real_step = optimizer.step
    optimizer.step = lambda: (real_step(), after_each_step.append(
        [parameter.detach().clone() for parameter in model.parameters()]))
    train.train_one_epoch(model, loader, loss_fn, optimizer)
    train.train_one_epoch(plain, loader, loss_fn, torch.optim.SGD(plain.parameters(), lr=0.5))
    first, second = after_each_step
    for average, w1, w2 in zip(averaged.average.parameters(), first, second):
        assert torch.allclose(average, 0.9 * w1 + 0.1 * w2, atol=1e-6)
    for trained, without in zip(model.parameters(), plain.parameters()):
        assert torch.equal(trained, without)


def test_ema_is_bit_identical_to_torchs_averaged_model(mnist):
    """The hand-written average computes exactly what
    swa_utils.AveragedModel with get_ema_multi_avg_fn computes (the runs
    measured before it was written by hand stay reproducible)."""
    torch.manual_seed(0)
    model = MLP([32, 16])
    swa_utils = torch.optim.swa_utils
    torchs = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.99))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    ours = MovingAverage(model, 0.99, optimizer)  # updated by optimizer.step()
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(3):
        for images, labels in two_batch_loader(mnist):
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
            torchs.update_parameters(model)
    assert ours.steps == int(torchs.n_averaged) == 6
    for a, b in zip(ours.average.parameters(), torchs.module.parameters()):
        assert torch.equal(a, b)


def test_ema_run_validates_and_saves_the_average(capsys, mnist, tmp_path, monkeypatch):
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys, "--ema", 0.5)
    model, checkpoint = load_checkpoint(out)
    trained = checkpoint["training_state"]["averaging"]["weights"]
    assert any(not torch.equal(trained[name], weights)
               for name, weights in checkpoint["state_dict"].items())
    _, val_set, _ = data.train_val_sets(mnist, "mnist", 100, 0, torch.device("cpu"))
    val_loader = data.make_loader(val_set, 1000, shuffle=False)
    assert train.validate(model, val_loader) == pytest.approx(
        (checkpoint["metrics"][-1]["val_loss"], checkpoint["metrics"][-1]["val_accuracy"]))


def test_ema_run_resumes_from_a_checkpoint_that_counts_its_steps_in_a_tensor(
        capsys, mnist, tmp_path, monkeypatch):
    """Checkpoints written while --ema used AveragedModel hold the step count
    as a tensor; they resume as those written now, with a number."""
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys, "--ema", 0.5)
    checkpoint = torch.load(out, weights_only=True)
    steps = checkpoint["training_state"]["averaging"]["steps"]
    assert isinstance(steps, int) and steps > 0
    checkpoint["training_state"]["averaging"]["steps"] = torch.tensor(steps)
    older = tmp_path / "older.pt"
    torch.save(checkpoint, older)
    for path in (out, older):
        code, _, err = run(capsys, train, "--resume", path, "--data-dir", mnist)
        assert code == 0, err
    current, resumed_older = (torch.load(path, weights_only=True)["state_dict"]
                              for path in (out, older))
    for name, weights in current.items():
        assert torch.equal(resumed_older[name], weights), name


def test_training_switches_dropout_back_on_after_evaluation(mnist):
    """logits_and_labels() (validation) puts the model in eval mode; the next epoch must
    train with dropout again: its loss is then not the eval-mode loss."""
    torch.manual_seed(0)
    model = MLP([256], dropout=0.5)
    loader = two_batch_loader(mnist)
    loss_fn = torch.nn.CrossEntropyLoss()
    logits_and_labels(model, loader)  # as validate() does after every epoch
    assert not model.training
    eval_loss = sum(loss_fn(model(images), labels).item() for images, labels in loader) / 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    train_loss, _ = train.train_one_epoch(model, loader, loss_fn, optimizer)
    assert abs(train_loss - eval_loss) > 1e-3


def test_prediction_is_deterministic_and_without_dropout(mnist):
    torch.manual_seed(0)
    model = MLP([256], dropout=0.5)
    model.train()  # as training leaves it
    without_dropout = MLP([256], dropout=0.0)
    without_dropout.load_state_dict(model.state_dict())
    loader = two_batch_loader(mnist)
    first, _ = logits_and_labels(model, loader)
    second, _ = logits_and_labels(model, loader)
    assert torch.equal(first, second)
    assert torch.allclose(first, logits_and_labels(without_dropout, loader)[0])


def test_validation_uses_the_model_without_dropout(mnist):
    torch.manual_seed(0)
    model = MLP([256], dropout=0.5)
    model.train()
    _, val_set = split(mnist, 100)
    val_loader = data.make_loader(val_set, 1000, shuffle=False)
    without_dropout = MLP([256], dropout=0.0)
    without_dropout.load_state_dict(model.state_dict())
    assert train.validate(model, val_loader) == train.validate(without_dropout, val_loader)
    logits, labels = logits_and_labels(without_dropout, val_loader)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert train.validate(model, val_loader)[1] == accuracy
