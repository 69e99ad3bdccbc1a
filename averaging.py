"""A moving average of a model's weights, for long runs (train.py --ema)."""

import copy

import torch


class MovingAverage:
    """An exponential moving average of a model's weights (--ema): after the
    first step a copy of the weights, after each further step
    average <- decay * average + (1 - decay) * weights.
    Averaging the weights of the last few thousand steps smooths out the noise
    of the single steps.

    Written by hand because torch.optim.swa_utils.AveragedModel, which computes
    the same, copies its step count from the CPU to the GPU at every step, and
    that copy makes the CPU wait for the GPU (measured: level with this one for
    one run alone on a GPU, a fifth slower with six runs sharing it)."""

    def __init__(self, model, decay, optimizer):
        self.average = copy.deepcopy(model)  # the averaged model, validated and saved
        self.decay = decay
        self.steps = 0  # a Python number, so reading it never waits for a GPU
        # Updated after every optimizer.step() by torch's own hook for it: the
        # training loop needs no line for the average.
        optimizer.register_step_post_hook(lambda *_: self.update(model))

    @torch.no_grad()
    def update(self, model):
        # Parameters only: an MLP has no buffers (batch norm's running statistics
        # would have to be copied or averaged too).
        for average, weights in zip(self.average.parameters(), model.parameters()):
            if self.steps == 0:
                average.copy_(weights)
            else:
                average.lerp_(weights, 1 - self.decay)
        self.steps += 1
