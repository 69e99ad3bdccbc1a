"""lab/benchmark.py: the training speed."""

import sys
from concurrent.futures import ThreadPoolExecutor

import torch
from conftest import (
    job,
    job_result,
    run,
)

import data
from lab import benchmark

# ----------------------------------------------------------------------------
# benchmark.py

def measured_in_this_process(monkeypatch):
    """benchmark.py's Adam step on denormals, without the two new processes it
    takes (seconds each; the test after next runs them)."""
    monkeypatch.setattr(benchmark, "adam_on_denormals_in_a_new_process",
                        lambda hidden, flush: (0.1, 0.0) if flush else (0.2, 1.0))


def test_benchmark_prints_all_five_rows(capsys, mnist, monkeypatch):
    measured_in_this_process(monkeypatch)
    code, stdout, _ = run(capsys, benchmark, "--data-dir", mnist, "--epochs", 1,
                          "--hidden", 32, "--batch-size", 100, "--device", "cpu")
    assert code == 0
    rows = {line[:15].strip(): line[15:].split() for line in stdout.splitlines()}
    for name in ("ours", "ours, no aug.", "ours, bf16", "conventional", "floor"):
        seconds, images_per_second = rows[name]
        # A fast machine runs the floor of this tiny model's 600 images in under
        # half a millisecond, which prints as 0.000: the rate shows it was timed.
        assert float(seconds) >= 0 and float(images_per_second.replace(",", "")) > 0
    # Epochs of 600 images take milliseconds: a busy moment may make them
    # disagree, which the benchmark then says instead of comparing them.
    assert ("ours / floor" in stdout) != ("cannot be trusted" in stdout)
    assert "peak memory" in stdout
    assert f"torch {torch.__version__}" in stdout
    assert "Adam's step on denormal moment estimates" in stdout
    assert "denormals are not flushed" not in stdout


@job("test_benchmark_s_adam_step_flushes_as_train_py_does_or_not_at_all")
def adam_on_denormals_flushed_and_not(folder):
    with ThreadPoolExecutor(2) as both:  # the two processes at once: their times are not read
        return list(both.map(benchmark.adam_on_denormals_in_a_new_process, [[32], [32]],
                             [True, False]))


def test_benchmark_s_adam_step_flushes_as_train_py_does_or_not_at_all(fresh_interpreters,
                                                                     request):
    (flushed, left), (unflushed, stayed) = job_result(fresh_interpreters, request)
    assert flushed > 0 and unflushed > 0
    assert (left, stayed) == (0, 1)  # each moment estimate flushed to 0, or none


def test_benchmark_says_when_its_figures_cannot_be_trusted(capsys, mnist, monkeypatch):
    assert benchmark.doubts({"ours": [1.0, 1.2], "floor": [0.5, 0.6]}) == []
    reasons = benchmark.doubts({"ours": [1.0, 2.0], "floor": [0.5, 0.5]})
    assert reasons == ["the ours epochs took 1.000 to 2.000 s"]
    reasons = benchmark.doubts({"ours": [1.0, 1.0], "floor": [1.5, 1.5]})
    assert reasons == ["the floor was slower than ours, which does its work and more"]
    # A busy machine's figures are printed, but not compared as results.
    measured_in_this_process(monkeypatch)
    monkeypatch.setattr(benchmark, "epoch_seconds", lambda runs, epochs, device: {
        name: [3.0, 3.1] if name == "floor" else [1.0, 1.1] for name in runs})
    code, stdout, _ = run(capsys, benchmark, "--data-dir", mnist, "--epochs", 2,
                          "--hidden", 32, "--device", "cpu")
    assert code == 0
    assert "these figures cannot be trusted: the floor was slower than ours" in stdout
    assert "ours / floor" not in stdout and "conventional / ours" not in stdout


def test_benchmark_s_peak_memory_is_in_mib_on_linux_and_macos_and_absent_on_windows(
        monkeypatch):
    class Resource:  # 1 GiB: 2**20 KiB on Linux, 2**30 bytes on macOS
        RUSAGE_SELF = 0

        def __init__(self, peak):
            self.peak = peak

        def getrusage(self, who):
            return type("Usage", (), {"ru_maxrss": self.peak})

    for platform, peak in (("linux", 2**20), ("darwin", 2**30)):
        monkeypatch.setattr(sys, "platform", platform)
        monkeypatch.setitem(sys.modules, "resource", Resource(peak))
        assert benchmark.peak_memory_mib() == 1024
    monkeypatch.setitem(sys.modules, "resource", None)  # import resource: ImportError
    assert benchmark.peak_memory_mib() is None


def test_benchmark_random_data_is_valid_mnist(tmp_path):
    """Without MNIST the benchmark writes random data in its format, which the
    real reader accepts."""
    assert not benchmark.has_mnist(tmp_path)
    benchmark.write_random_mnist(str(tmp_path), train_images=100, test_images=20)
    assert benchmark.has_mnist(tmp_path)
    images, labels = data.load_split(str(tmp_path), "mnist", "train")
    assert images.shape == (100, 28, 28) and labels.shape == (100,)
    assert len(data.load_split(str(tmp_path), "mnist", "test")[1]) == 20
