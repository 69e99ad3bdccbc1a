"""The fixtures and machinery of the tests in tests/, read by pytest before
them; they import the plain helpers they call from here (from conftest import
...). The card's own checks, test_mnist.py at the root, need none of this.

A small data set in the MNIST file format, written to a temporary folder and read
through the real data.py code; ways to run a script, in this process or in a fresh
Python; the checkpoints, runs, drawn digits, server and browser that tests share;
and the tests' fresh interpreters, started together as jobs.
"""

import os

# torch's OpenMP threads spin for a while after each parallel computation,
# waiting for more; the suite's tiny computations leave them spinning most of
# the time, on the cores its fresh interpreters and servers need (the whole
# suite on two cores, measured: 82 s and 125 s of CPU spinning, 59 s and 84 s
# passive). Set before torch is imported; what torch computes is the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ast
import contextlib
import http.client
import io
import json
import math
import random
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps

import data
import train  # sets torch's denormal flushing before this process computes anything
from checkpoint import load_checkpoint, save_checkpoint
from model import MLP

# The project's folder, where the scripts run and the README is.
PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tests' own computations are tiny, and one thread does them faster than two
# kept in step (as draw.py's server finds too): the whole suite, measured, 89 s
# on two threads and 74 s on one. A training process keeps torch's default, and
# since the number of threads changes the order of a sum, the tests that compare
# this process's runs with a training process's switch to it.
THREADS_OF_A_TRAINING_PROCESS = torch.get_num_threads()
torch.set_num_threads(1)


@contextlib.contextmanager
def threads_of_a_training_process():
    torch.set_num_threads(THREADS_OF_A_TRAINING_PROCESS)
    try:
        yield
    finally:
        torch.set_num_threads(1)


# The tests that need a fresh Python wait seconds for it to import torch. Their
# fresh interpreters are jobs, started together when the session starts (those
# of the tests selected), two at a time beside the tests that run in this
# process; each test then reads its job's result. A job is a function of a new
# folder and the fixtures it names.
JOBS = {}


def job(test_name, *fixtures, key=None):
    def register(run):
        JOBS[test_name, key] = run, fixtures
        return run
    return register


@pytest.fixture(scope="session", autouse=True)
def fresh_interpreters(request, tmp_path_factory):
    """{(test name, key): a future of its job's result}, for the tests selected."""
    selected = {item.originalname for item in request.session.items}
    with ThreadPoolExecutor(2) as in_turn:
        futures = {}
        for (test_name, key), (run, fixtures) in JOBS.items():
            if test_name in selected:
                arguments = [request.getfixturevalue(name) for name in fixtures]
                futures[test_name, key] = in_turn.submit(
                    run, tmp_path_factory.mktemp("job"), *arguments)
        yield futures
        for future in futures.values():
            future.cancel()  # those of tests that did not get to run (pytest -x)


def job_result(fresh_interpreters, request, key=None):
    """The result of the job of the test that asks."""
    return fresh_interpreters[request.node.originalname, key].result(timeout=300)


# ----------------------------------------------------------------------------
# Copied into homework: the pieces of the project's files, as a student pastes them

def source_of(path, name):
    """The source text of the class or function `name` in the file `path`, with
    its decorators (@torch.no_grad())."""
    with open(os.path.join(PROJECT, path)) as f:
        text = f.read()
    node = next(node for node in ast.parse(text).body if getattr(node, "name", None) == name)
    first = node.decorator_list[0] if node.decorator_list else node
    return "\n".join(text.splitlines()[first.lineno - 1:node.end_lineno])


def pasted_alone(*pieces):
    """Run each piece's source text in a namespace holding only what a homework
    script that did `import torch`, `from torch import nn` and
    `import torch.nn.functional as F` has."""
    namespace = {"torch": torch, "nn": torch.nn, "F": F}
    for path, name in pieces:
        exec(source_of(path, name), namespace)
    return namespace


def readme_section(heading):
    """The text of the README's section `heading`, to the next heading."""
    with open(os.path.join(PROJECT, "README.md")) as f:
        return f.read().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def readme_block(heading):
    """The first ```python block of the README's section `heading`."""
    return readme_section(heading).split("```python\n", 1)[1].split("\n```", 1)[0] + "\n"


def code_of(source, name):
    """The code of the class or function `name` in `source`, without comments
    and docstrings (ast keeps neither)."""
    node = next(node for node in ast.parse(source).body if getattr(node, "name", None) == name)
    for part in ast.walk(node):
        body = getattr(part, "body", None)
        if (isinstance(part, (ast.ClassDef, ast.FunctionDef)) and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)):
            part.body = body[1:]
    return ast.dump(node)


# ----------------------------------------------------------------------------
# A small MNIST of our own, and ways to run the scripts

def write_idx(path, values):
    """The MNIST file format, written independently of data.py's reader."""
    header = (0x800 + values.dim()).to_bytes(4, "big")
    header += b"".join(size.to_bytes(4, "big") for size in values.shape)
    with open(path, "wb") as f:
        f.write(header + values.to(torch.uint8).numpy().tobytes())


def synthetic_digits(count, generator):
    """Ten fixed random blob patterns (one per class) with pixel noise: easy to
    learn, so a few steps of training show whether learning works."""
    patterns = (torch.rand(10, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.75) * 200.0
    labels = torch.arange(count) % 10
    noise = torch.rand(count, 28, 28, generator=generator) * 55
    return (patterns[labels] + noise).to(torch.uint8), labels.to(torch.uint8)


def make_mnist(root, train_count=600, test_count=200, dataset="mnist"):
    raw = data.raw_folder(root, dataset)
    os.makedirs(raw)
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", train_count), ("test", test_count)):
        images, labels = synthetic_digits(count, generator)
        write_idx(os.path.join(raw, data.FILES[split][0]), images)
        write_idx(os.path.join(raw, data.FILES[split][1]), labels)
    return str(root)


@pytest.fixture(scope="session")
def mnist(tmp_path_factory):
    return make_mnist(tmp_path_factory.mktemp("mnist"))


CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def pictures():
    """lab/pictures.py, imported by the tests that draw: matplotlib and torchvision
    take two seconds to import, which the other tests need not wait for."""
    from lab import pictures

    return pictures


def split(root, val_size, seed=0):
    """The training and validation sets, as train.py makes them."""
    train_set, val_set, _ = data.train_val_sets(root, "mnist", val_size, seed, CPU)
    return train_set, val_set


def mnist_test_set(root):
    """The test set, normalized as train.py's training set (all 600 images) is."""
    _, _, normalization = data.train_val_sets(root, "mnist", 0, 0, CPU)
    return data.as_dataset(*data.load_split(root, "mnist", "test"), CPU, normalization)


@pytest.fixture(scope="session")
def checkpoint(mnist, tmp_path_factory):
    """A model trained for two epochs on the small data set."""
    path = str(tmp_path_factory.mktemp("model") / "model.pt")
    train.main(["--data-dir", mnist, "--epochs", "2", "--hidden", "64", "--val-size", "100",
                "--batch-size", "50", "--device", "cpu", "--out", path])
    return path


def run(capsys, script, *argv):
    """script.main(argv) as `python script.py argv` would run it: returns (exit
    code, stdout, stderr). sys.exit("message") prints the message to stderr and
    exits with 1; any other exception would be a traceback and fails the test."""
    try:
        script.main([str(arg) for arg in argv])
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) or exit.code is None else 1
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code or 0, out, err


def run_command(*argv, **kwargs):
    """The real command line, in a fresh Python."""
    return subprocess.run([sys.executable, *map(str, argv)], cwd=PROJECT, capture_output=True,
                          text=True, timeout=120, **kwargs)


def start_command(*argv, **kwargs):
    """The real command line in a fresh Python, running on, as from a terminal:
    Ctrl-C (SIGINT) reaches it even when the tests themselves run in the
    background, where the shell starts every process with SIGINT ignored.
    At a lower priority (nice 10): a test that signals it when it prints a line
    then finds it still where that line was, however busy the machine (at equal
    priority, on two cores beside the suite's other work, a run of three short
    epochs sometimes finished before the signal came). (Windows has no
    preexec_fn, and no SIGINT to send: posix_signals skips there.)"""
    def as_from_a_terminal_at_a_lower_priority():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.nice(10)

    return subprocess.Popen([sys.executable, *map(str, argv)], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=None if os.name == "nt" else
                            as_from_a_terminal_at_a_lower_priority, **kwargs)


# Windows' signal has no SIGKILL, and its send_signal(SIGTERM) kills at once,
# as SIGKILL does: a test that signals a training process skips there.
posix_signals = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL"),
    reason="needs POSIX signals (SIGINT, SIGTERM, SIGKILL) sent to a process; Windows lacks them")


def assert_one_line_error(code, err, *expected):
    assert code != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err


# ----------------------------------------------------------------------------
# Every flag acts: the weights of short runs, each with flags added

FLAG_RUN = ["--epochs", "1", "--hidden", "16", "--val-size", "100", "--batch-size", "50",
            "--device", "cpu"]


@pytest.fixture(scope="module")
def saved_weights(mnist, tmp_path_factory):
    """The weights that a short run with these flags saves, and what it printed."""
    runs = {}

    def weights_of(*flags):
        if flags not in runs:
            out = tmp_path_factory.mktemp("flags") / "m.pt"
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                train.main(["--data-dir", mnist, "--out", str(out), *FLAG_RUN, *flags])
            runs[flags] = torch.load(out, weights_only=True)["state_dict"], printed.getvalue()
        return runs[flags]
    return weights_of


# ----------------------------------------------------------------------------
# A run to resume, interrupted (Ctrl-C) in its second epoch

RESUMABLE_RUN = ["--val-size", "100", "--hidden", "32", "--dropout", "0.2", "--augment",
                 "--elastic-alpha", "4", "--batch-size", "5", "--device", "cpu"]


def interrupt_the_second_epoch(monkeypatch):
    """train.py's second epoch ends as Ctrl-C ends it. Returns the real epoch."""
    real_epoch, epochs = train.train_one_epoch, []

    def interrupt_the_second(*args, **kwargs):
        epochs.append(1)
        if len(epochs) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupt_the_second)
    return real_epoch


def in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys, *flags):
    """A run of 3 epochs, with `flags` added, interrupted (Ctrl-C) during its second."""
    out = tmp_path / "run.pt"
    real_epoch = interrupt_the_second_epoch(monkeypatch)
    code, _, err = run(capsys, train, "--data-dir", mnist, "--out", out, *RESUMABLE_RUN,
                       "--epochs", 3, *flags)
    monkeypatch.setattr(train, "train_one_epoch", real_epoch)
    assert code == 1 and "after epoch 1 of 3" in err, err
    return out


@pytest.fixture(scope="module")
def interrupted_run(mnist, tmp_path_factory):
    """in_progress_checkpoint's run, made once for the tests that only read it."""
    out = tmp_path_factory.mktemp("interrupted") / "run.pt"
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(io.StringIO()):
        interrupt_the_second_epoch(monkeypatch)
        with pytest.raises(SystemExit, match="after epoch 1 of 3"):
            train.main(["--data-dir", str(mnist), "--out", str(out), *RESUMABLE_RUN,
                        "--epochs", "3"])
    return out


# ----------------------------------------------------------------------------
# Fashion-MNIST: the small data set in Fashion-MNIST's folder

@pytest.fixture(scope="session")
def fashion(tmp_path_factory):
    return make_mnist(tmp_path_factory.mktemp("fashion"), dataset="fashion-mnist")


# ----------------------------------------------------------------------------
# Digits drawn with a pen, and a model that reads them (draw.py's tests, and
# predict.py's thin strokes): the model trained on the blobs above cannot read
# drawn digits, so these tests train their own in a few seconds.


def arc(centre_x, centre_y, radius_x, radius_y, start, end, steps=20):
    """Points along an ellipse, from angle `start` to `end` in degrees (0 is to
    the right, 90 straight down)."""
    return [(centre_x + radius_x * math.cos(math.radians(start + (end - start) * i / steps)),
             centre_y + radius_y * math.sin(math.radians(start + (end - start) * i / steps)))
            for i in range(steps + 1)]


# The ten digits as pen strokes in a box 0.6 wide and 1 high, y downwards.
DIGIT_STROKES = [
    [arc(0.3, 0.5, 0.28, 0.48, -90, 270)],
    [[(0.36, 0.0), (0.3, 1.0)]],
    [arc(0.3, 0.27, 0.26, 0.25, 180, 360, 12) + [(0.05, 1.0), (0.6, 1.0)]],
    [arc(0.28, 0.25, 0.26, 0.24, 210, 450, 16) + arc(0.28, 0.73, 0.3, 0.26, -90, 150, 16)],
    [[(0.45, 1.0), (0.45, 0.0), (0.0, 0.65), (0.6, 0.65)]],
    [[(0.56, 0.0), (0.1, 0.0), (0.06, 0.45)] + arc(0.28, 0.7, 0.3, 0.28, -120, 150, 16)],
    [[(0.5, 0.0), (0.25, 0.2), (0.06, 0.55)] + arc(0.32, 0.74, 0.26, 0.25, 180, 540, 24)],
    [[(0.0, 0.0), (0.6, 0.0), (0.2, 1.0)]],
    [arc(0.3, 0.25, 0.22, 0.24, 90, 450) + arc(0.3, 0.73, 0.28, 0.26, -90, 270)],
    [arc(0.3, 0.28, 0.26, 0.27, 0, 360) + [(0.56, 0.28), (0.48, 1.0)]],
]


def pen_strokes(digit, rng, size):
    """Digit `digit`'s strokes in pixels on a size x size page, at a random
    place, height and slant."""
    height = size * rng.uniform(0.5, 0.8)
    slant = rng.uniform(-0.25, 0.25)
    left = rng.uniform(0.1 * size, 0.9 * size - 0.75 * height)
    top = rng.uniform(0.1 * size, 0.9 * size - height)
    return [[(left + (x + slant * (1 - y)) * height, top + y * height) for x, y in stroke]
            for stroke in DIGIT_STROKES[digit]]


def row_strokes(digits, rng, height, gaps):
    """The digits' strokes side by side, `height` pixels high, each slanted at
    random, with `gaps` (in the height) between their 0.6-wide boxes; and the
    page's (width, height) that holds them with a margin of half the height.
    A digit is a class, or its own strokes in a box as DIGIT_STROKES's."""
    strokes, left = [], height / 2
    for digit, gap in zip(digits, [0, *gaps]):
        left += gap * height
        slant = rng.uniform(-0.15, 0.15)
        strokes += [[(left + (x + slant * (1 - y)) * height, height / 2 + y * height)
                     for x, y in stroke]
                    for stroke in (DIGIT_STROKES[digit] if isinstance(digit, int) else digit)]
        left += 0.6 * height
    return strokes, (round(left + height / 2), 2 * height)


def drawing(strokes, pen, size):
    """The strokes drawn with a round `pen` pixels wide, black on a white page
    of size x size pixels, or of size = (width, height)."""
    page = Image.new("L", size if isinstance(size, tuple) else (size, size), 255)
    ink = ImageDraw.Draw(page)
    for stroke in strokes:
        ink.line(stroke, fill=0, width=pen, joint="curve")
        for x, y in (stroke[0], stroke[-1]):  # round ends, as a pen leaves them
            ink.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=0)
    return page


def grey_levels(page):
    """A PIL image as predict.read_image gives it: grey levels in [0, 1]."""
    pixels = torch.frombuffer(bytearray(page.tobytes()), dtype=torch.uint8)
    return pixels.view(page.height, page.width).float() / 255


def png(page):
    file = BytesIO()
    page.save(file, format="PNG")
    return file.getvalue()


@pytest.fixture(scope="session")
def drawn_digit_model(tmp_path_factory):
    """A checkpoint of a small MLP trained on drawn digits, each prepared as
    predict.py prepares a photo: 600 drawings, pens from fine to thick."""
    from lab import predict  # only here: the lab's tests alone need it

    rng = random.Random(0)
    labels = torch.arange(600) % 10
    images = []
    for digit in labels.tolist():
        page = drawing(pen_strokes(digit, rng, 200), rng.randint(1, 15), 200)
        images.append(predict.prepare(grey_levels(page)))
    images = torch.stack(images)
    normalization = {"mean": images.mean().item(), "std": images.std().item()}
    inputs = ((images - normalization["mean"]) / normalization["std"])[:, None]
    torch.manual_seed(0)
    model = MLP(hidden=[64])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    # on its own training drawings, which is all the page needs to show
    accuracy = (model(inputs).argmax(dim=1) == labels).float().mean().item()
    path = str(tmp_path_factory.mktemp("drawn") / "drawn.pt")
    save_checkpoint(path, model, normalization, dataset="mnist",
                    classes=[str(digit) for digit in range(10)],
                    train_args={"label_smoothing": 0.0},
                    metrics=[{"epoch": 1, "val_accuracy": accuracy}], epochs_completed=1,
                    training_state=None)
    return path


@pytest.fixture
def server(drawn_digit_model):
    """draw.py's server on a free port, in a thread of this process: its address."""
    from lab import draw  # only here: the drawing page's tests alone start it

    model, checkpoint = load_checkpoint(drawn_digit_model)
    model.eval()
    httpd = draw.Server(("127.0.0.1", 0), draw.handler(model, checkpoint))
    # Polled for shutdown every 10 ms, not the standard library's 0.5 s: each
    # test's server stops without keeping the suite waiting.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    yield httpd.server_address[:2]
    httpd.shutdown()
    thread.join()
    httpd.server_close()


# ----------------------------------------------------------------------------
# Sockets: more open files than the system may allow by default

@pytest.fixture
def open_files():
    """allow(count): let this process hold `count` more open files (sockets) than
    it has, raising its limit where the resource module can (macOS's default is
    256), or skip; put back afterwards. Windows has no such limit, nor the module."""
    try:
        import resource
    except ImportError:
        yield lambda count: None
        return
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)

    def allow(count):
        soft, hard = limits
        wanted = count + 256  # and the files that torch, pytest and the tests have open
        if soft == resource.RLIM_INFINITY or soft >= wanted:
            return
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} open files; this system allows {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    yield allow
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


# ----------------------------------------------------------------------------
# The page in a real browser: headless Chromium, driven by selenium

INSTALL = "needs a browser: apt-get install chromium chromium-driver; pip install selenium"


@pytest.fixture(scope="session")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip(INSTALL)
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip(INSTALL)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=700,800", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()


# ----------------------------------------------------------------------------
# Helpers that tests of several files share

def timeless(metrics):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
            for row in metrics]


def offline(monkeypatch):
    """Any download goes through a proxy that refuses connections: offline, fast."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


def checkpoint_files(tmp_path, good_checkpoint):
    """Bad files a student might be handed, by name."""
    good = open(good_checkpoint, "rb").read()
    files = {"missing": None, "a directory": None, "empty": b"", "truncated": good[:len(good) // 2],
             "random bytes": os.urandom(4096)}
    paths = {name: tmp_path / name.replace(" ", "_") for name in files}
    os.mkdir(paths["a directory"])
    for name, content in files.items():
        if content is not None:
            paths[name].write_bytes(content)
    paths["not ours"] = tmp_path / "not_ours.pt"
    torch.save({"weights": torch.zeros(3)}, paths["not ours"])
    wrong_shape = torch.load(good_checkpoint, weights_only=True)
    wrong_shape["config"]["hidden"] = [65]
    paths["wrong shape"] = tmp_path / "wrong_shape.pt"
    torch.save(wrong_shape, paths["wrong shape"])
    no_normalization = torch.load(good_checkpoint, weights_only=True)
    del no_normalization["normalization"]
    paths["no normalization"] = tmp_path / "no_normalization.pt"
    torch.save(no_normalization, paths["no normalization"])
    older = torch.load(good_checkpoint, weights_only=True)
    older["format"] = "mnist-mlp-checkpoint/1"
    paths["older format"] = tmp_path / "older.pt"
    torch.save(older, paths["older format"])
    foreign_state = torch.load(good_checkpoint, weights_only=True)
    foreign_state["training_state"] = {"optimizer": {"state": {}, "param_groups": []},
                                       "scheduler": None, "random": {}}
    paths["foreign training state"] = tmp_path / "foreign_state.pt"
    torch.save(foreign_state, paths["foreign training state"])
    return paths


class RunsCode:
    """Unpickling this calls open(), creating a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def digit_drawings():
    """The ten digits drawn in a font: the 28 x 28 images the model is asked
    about, and the large drawings (white ink on black, 400 pixels high) they
    were made from."""
    from matplotlib import font_manager  # only here: importing matplotlib takes seconds

    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 360)
    drawings = []
    for digit in range(10):
        drawing = Image.new("L", (300, 420), 0)
        ImageDraw.Draw(drawing).text((20, 0), str(digit), font=font, fill=255)
        drawings.append(drawing)
    return drawings


def as_photo(drawing, path):
    """A drawing as a photo of paper: dark ink on a light page, off-centre."""
    page = Image.new("L", (900, 700), 230)
    page.paste(ImageOps.invert(drawing).point(lambda v: 30 + v * 200 // 255), (520, 230))
    page.convert("RGB").save(path, quality=90)


def http_request(server, method, path, body=None):
    """(status, the answer's JSON or the page's text)."""
    connection = http.client.HTTPConnection(*server, timeout=30)
    connection.request(method, path, body=body)
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    if response.getheader("Content-Type") == "application/json":
        return response.status, json.loads(text)
    return response.status, text


def assert_one_line_of_json(status, answer, code, text):
    assert status == code and list(answer) == ["error"] and text in answer["error"]
    assert "\n" not in answer["error"]
