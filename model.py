"""The multi-layer perceptron, and how to ask it for predictions.

The class below runs on its own: paste it after `import torch` and
`from torch import nn`.
"""

import torch
from torch import nn


class MLP(nn.Module):
    """A multi-layer perceptron: linear layers with a pointwise non-linearity in
    between. With one hidden layer, MLP(1024), it is the lecture's

        h = relu(W1 x + b1)
        y = W2 h + b2

    where x is the image flattened to 784 numbers and y holds one logit per class:
    the lecture's "log odds", the log-probabilities up to a constant. The predicted
    class is the largest logit's, `logits.argmax(dim=1)`. Softmax is not applied
    here: nn.CrossEntropyLoss does it, fused with the log: faster, and stable.

    hidden: the width of each hidden layer, MLP([1000, 500]), or one width.
    activation: the pointwise non-linearity, "relu" (the lecture's), "gelu",
    "tanh", "sigmoid", or "identity" (none: the layers then make one linear
    map, as a single layer would, which is what a non-linearity lifts).
    """

    def __init__(self, hidden=(1024,), dropout=0.0, in_features=28 * 28, num_classes=10,
                 activation="relu"):
        super().__init__()
        widths = [in_features, hidden] if isinstance(hidden, int) else [in_features, *hidden]
        self.hidden_layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip(widths, widths[1:]))
        self.activation = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
                           "sigmoid": nn.Sigmoid, "identity": nn.Identity}[activation]()
        self.dropout = nn.Dropout(dropout)  # does nothing when dropout=0 or in eval()
        self.output_layer = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        h = x.flatten(1)  # [B, 1, 28, 28] -> [B, 784]
        for linear in self.hidden_layers:
            h = self.dropout(self.activation(linear(h)))  # h = relu(W x + b), by default
        return self.output_layer(h)  # y = W h + b: the logits


@torch.no_grad()
def logits_and_labels(model, loader):
    """The model's logits for every batch of `loader`, and the labels, in order,
    on the model's device."""
    model.eval()  # no dropout
    device = next(model.parameters()).device
    all_logits, all_labels = [], []
    for images, labels in loader:
        all_logits.append(model(images.to(device)))
        all_labels.append(labels.to(device))
    return torch.cat(all_logits), torch.cat(all_labels)
