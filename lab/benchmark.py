"""How fast does train.py train, next to the usual tutorial pipeline and next to
the compute floor? One command, one table:

    python -m lab.benchmark [--device auto] [--batch-size N] [--hidden ...] [--epochs N]
                        [--data-dir DIR]

Every row trains the same model at the same batch size, on the same device, in
float32 unless it says bf16, over the same 60,000 images per epoch:

  ours           data.py's batches and train.py's own train_one_epoch, optimizer,
                 scheduler and loss, with train.py's defaults (imported, not copied)
  ours, no aug.  the same without the data augmentation that train.py does by
                 default and the other rows do not
  ours, bf16     ours with --bf16: the layers' matrix products in bfloat16 (slower
                 than float32 on a device without native bfloat16, which it says)
  conventional   the tutorial pipeline: torchvision's MNIST with ToTensor() and
                 Normalize() transforms, a DataLoader (num_workers=0) and the
                 textbook loop with a default Adam
  floor          only the matrix products of the forward and backward passes, on
                 preallocated tensors: what no data pipeline or optimizer can beat

Each row is the median of --epochs timed epochs after a warm-up, the rows taking
turns epoch by epoch so that a slow spell of a shared machine hits them all
alike. When the figures cannot be trusted even so (a row's epochs disagree, or
the floor is slower than the pipeline it bounds: the machine was busy), it says
so instead of comparing them. Without MNIST in --data-dir the benchmark writes
random images of MNIST's shape to a temporary folder and uses those, so it
always runs.
"""

import sys

if not __package__:  # python lab/benchmark.py: Python would look for cli.py and the rest in lab/
    sys.exit("run it from the project's folder as a module: python -m lab.benchmark "
             + " ".join(sys.argv[1:]))

import os
import statistics
import subprocess
import tempfile
import time

# torch's threads wait as in train.py (which says why), set before torch starts them.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "300")

import torch
import torch.nn.functional as F

import cli
import data
import train
from lab import PROJECT_FOLDER
from model import MLP


def parse_args(argv=None):
    defaults = train.parse_args([])[0]
    parser = cli.ArgumentParser(
        prog="python -m lab.benchmark",
        description="Time ours, the tutorial pipeline and the floor.")
    parser.add_argument("--hidden", type=cli.positive_int, nargs="+", default=defaults.hidden)
    parser.add_argument("--batch-size", type=cli.positive_int, default=defaults.batch_size)
    parser.add_argument("--epochs", type=cli.positive_int, default=3,
                        help="timed epochs per row, after one warm-up")
    cli.add_device_and_data_flags(parser)
    return parser.parse_args(argv)


def has_mnist(root):
    return all(os.path.isfile(os.path.join(data.raw_folder(root), name))
               for pair in data.FILES.values() for name in pair)


def write_random_mnist(root, train_images=60000, test_images=10000):
    """Random pixels and labels in the MNIST file format, where torchvision looks."""
    os.makedirs(data.raw_folder(root))
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", train_images), ("test", test_images)):
        for name, shape in zip(data.FILES[split], ([count, 28, 28], [count])):
            values = torch.randint(0, 256 if len(shape) > 1 else 10, shape,
                                   dtype=torch.uint8, generator=generator)
            header = (0x800 + len(shape)).to_bytes(4, "big")
            header += b"".join(size.to_bytes(4, "big") for size in shape)
            with open(os.path.join(data.raw_folder(root), name), "wb") as f:
                f.write(header + values.numpy().tobytes())


def ours(args, root, augment=True, bf16=False):
    """An epoch as train.py runs it: its data.py batches, model, optimizer,
    scheduler, loss and train_one_epoch, with its default hyperparameters."""
    flags = ["--hidden", *map(str, args.hidden), "--batch-size", str(args.batch_size),
             "--val-size", "0", "--device", str(args.device),
             "--augment" if augment else "--no-augment", *(["--bf16"] if bf16 else [])]
    train_args = train.parse_args(flags)[0]
    train_set, _, normalization = data.train_val_sets(root, "mnist", 0, 0, args.device)
    if augment:  # as train.py distorts its batches
        train_set.transform = data.RandomDistortion(0, args.device, normalization, **{
            name: getattr(train_args, name) for name in data.DISTORTION_DEFAULTS})
    train_loader = data.make_loader(train_set, args.batch_size, shuffle=True,
                                   generator=torch.Generator().manual_seed(0))
    model = MLP(args.hidden).to(args.device)
    optimizer = train.make_optimizer(model, train_args)
    # A schedule long enough for every timed epoch.
    scheduler = train.make_scheduler(optimizer, train_args, 100 * len(train_loader))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=train_args.label_smoothing)

    def run_epoch(warm_up):
        train.train_one_epoch(model, train_loader, loss_fn, optimizer, scheduler,
                              train_args.bf16)

    return run_epoch, len(train_set)


def conventional(args, root):
    """The tutorial pipeline: PIL images converted and normalized one at a time,
    collated into batches by the DataLoader, copied to the device at each step."""
    from torchvision import datasets, transforms  # only here: importing it takes seconds

    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((0.1307,), (0.3081,))])  # MNIST
    dataset = datasets.MNIST(root, train=True, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    model = MLP(args.hidden).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run_epoch(warm_up):
        model.train()
        for step, (images, labels) in enumerate(loader):
            if warm_up and step == 20:
                break
            images, labels = images.to(args.device), labels.to(args.device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()

    return run_epoch, len(dataset)


def floor(args, images):
    """The products autograd runs for an MLP, on preallocated tensors: forward
    x @ W.T per layer; backward g.T @ x (weight gradient) per layer and g @ W
    (input gradient) for all layers but the first."""
    widths = [28 * 28, *args.hidden, data.NUM_CLASSES]
    batch = args.batch_size
    steps = -(-images // batch)

    def tensor(*shape):
        return torch.randn(*shape, device=args.device)

    layers = [(tensor(batch, n_in), tensor(n_out, n_in), tensor(batch, n_out),
               tensor(n_out, n_in), tensor(batch, n_in))
              for n_in, n_out in zip(widths, widths[1:])]

    def run_epoch(warm_up):
        for _ in range(3 if warm_up else steps):
            for x, weight, y, _, _ in layers:
                torch.mm(x, weight.t(), out=y)
            for i, (x, weight, y, weight_grad, x_grad) in enumerate(reversed(layers)):
                torch.mm(y.t(), x, out=weight_grad)
                if i < len(layers) - 1:
                    torch.mm(y, weight, out=x_grad)

    return run_epoch, images


def adam_on_denormals(hidden, flush):
    """Fused Adam's step on an MLP whose moment estimates are all denormal and
    whose gradients are 0, as for units that died long ago: the median time of a
    step in ms, and the share of the moments still denormal after the steps.
    Run first thing in a process of its own: flushing as train.py sets it at
    import (flush), or with that undone before torch starts its threads."""
    if not flush:
        torch.set_flush_denormal(False)
    model = MLP(hidden)
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    for weights in model.parameters():
        weights.grad = torch.zeros_like(weights)
    optimizer.step()  # makes the moment estimates, then made denormal from their bits
    moments = [moment for state in optimizer.state.values()
               for moment in (state["exp_avg"], state["exp_avg_sq"])]
    for moment in moments:
        moment.view(torch.int32).fill_(1000)  # 1.4e-42
    times = []
    for _ in range(100):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    denormal = sum((moment.view(torch.int32) != 0).sum().item() for moment in moments)
    return 1000 * statistics.median(times), denormal / sum(map(torch.numel, moments))


def adam_on_denormals_in_a_new_process(hidden, flush):
    """adam_on_denormals in a fresh Python: a thread keeps the floating-point
    mode it started with, so each mode needs a process whose threads start in it."""
    code = (f"from lab import benchmark; print(*benchmark.adam_on_denormals({list(hidden)}, "
            f"{flush}))")
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=PROJECT_FOLDER)
    return tuple(map(float, answer.stdout.split()))


def epoch_seconds(runs, epochs, device):
    """Warm every run up once, then time `epochs` rounds of one epoch each, the
    runs taking turns so that a slow spell of a shared machine hits them all.
    Returns each run's list of times."""
    seconds = {name: [] for name in runs}
    for run_epoch, _ in runs.values():
        run_epoch(warm_up=True)
    for _ in range(epochs):
        for name, (run_epoch, _) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            run_epoch(warm_up=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def doubts(seconds):
    """Why the timings of one benchmark cannot be trusted, if they cannot: a
    row whose epochs differ by more than a quarter (something else took the
    machine for a while), or a floor slower than our whole pipeline, which does
    the floor's work and more (the same images, so the times compare directly)."""
    reasons = [f"the {name} epochs took {min(times):.3f} to {max(times):.3f} s"
               for name, times in seconds.items() if max(times) > 1.25 * min(times)]
    if statistics.median(seconds["floor"]) > statistics.median(seconds["ours"]):
        reasons.append("the floor was slower than ours, which does its work and more")
    return reasons


def peak_memory_mib():
    """This process's peak resident memory in MiB, or None where it is unknown:
    the resource module is Unix's only, and macOS gives ru_maxrss in bytes
    where Linux gives KiB."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main(argv=None):
    args = parse_args(argv)
    cli.use_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        root, source = args.data_dir, f"MNIST in {args.data_dir}"
        if not has_mnist(root):
            root, source = scratch, "random images of MNIST's shape (no MNIST found)"
            write_random_mnist(root)
        print(f"model {[28 * 28, *args.hidden, 10]}, batch {args.batch_size}, float32, "
              f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
        print(f"data: {source}; median of {args.epochs} epochs after a warm-up\n")
        runs = {"ours": ours(args, root), "ours, no aug.": ours(args, root, augment=False),
                "ours, bf16": ours(args, root, bf16=True),
                "conventional": conventional(args, root)}
        runs["floor"] = floor(args, runs["ours"][1])
        all_seconds = epoch_seconds(runs, args.epochs, args.device)

    print(f"{'':15}{'s/epoch':>9}{'images/s':>12}")
    per_image = {}
    for name, (_, images) in runs.items():
        seconds = statistics.median(all_seconds[name])
        per_image[name] = seconds / images
        print(f"{name:15}{seconds:9.3f}{1 / per_image[name]:12,.0f}")
    reasons = doubts(all_seconds)
    if reasons:
        print(f"\nthese figures cannot be trusted: {'; '.join(reasons)}. The machine was "
              f"busy: run the benchmark again when it is idle")
    else:
        print(f"\nours / floor: {per_image['ours'] / per_image['floor']:.2f}x the time "
              f"({per_image['ours, no aug.'] / per_image['floor']:.2f}x without augmentation); "
              f"conventional / ours: {per_image['conventional'] / per_image['ours']:.1f}x; "
              f"bf16 / float32: {per_image['ours, bf16'] / per_image['ours']:.2f}x the time")
    if not cli.has_native_bf16(args.device):
        print(f"{args.device} has no native bfloat16: the bf16 row is emulated")
    (flushed, left), (unflushed, _) = (adam_on_denormals_in_a_new_process(args.hidden, flush)
                                       for flush in (True, False))
    print(f"Adam's step on denormal moment estimates (on the CPU, each in a new process): "
          f"{flushed:.3f} ms as train.py flushes them, {unflushed:.3f} ms unflushed "
          f"({unflushed / flushed:.1f}x)")
    if left:
        print(f"denormals are not flushed: {left:.0%} of the moments stayed denormal; "
              f"train.py's torch.set_flush_denormal is missing or comes too late")
    resident = peak_memory_mib()
    memory = [] if resident is None else [f"{resident:,.0f} MiB resident"]
    if args.device.type == "cuda":
        memory.append(f"{torch.cuda.max_memory_allocated(args.device) / 2**20:,.0f} MiB "
                      f"on the GPU")
    if memory:
        print(f"peak memory: {', '.join(memory)}")


if __name__ == "__main__":
    cli.run(main)
