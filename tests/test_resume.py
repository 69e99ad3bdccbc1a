"""A checkpoint every epoch, SIGTERM and SIGKILL, --resume."""

import errno
import os
import shutil
import signal

import pytest
import torch
from conftest import (
    RESUMABLE_RUN,
    RunsCode,
    assert_one_line_error,
    checkpoint_files,
    in_progress_checkpoint,
    job,
    job_result,
    posix_signals,
    run,
    start_command,
    threads_of_a_training_process,
    timeless,
)

import cli
import evaluate
import train

# ----------------------------------------------------------------------------
# A checkpoint every epoch, SIGTERM and SIGKILL, --resume
# (the runs to resume: RESUMABLE_RUN, in_progress_checkpoint and interrupted_run, in
# conftest.py)

def start_training(mnist, out, *flags):
    return start_command("train.py", "--data-dir", mnist, "--out", out, *RESUMABLE_RUN, *flags)


def stop_after_epoch(process, epoch, signal_number):
    """Send the signal as soon as `epoch` is printed: its checkpoint is saved
    before its line is, so the run is then in the next epoch."""
    for line in process.stdout:
        if line.split()[:1] == [str(epoch)]:
            break
    process.send_signal(signal_number)
    return process.communicate(timeout=60)


# Each signal stops a real process (with a flag that keeps more state); the run
# it leaves is then resumed here, to the weights of one never interrupted.
STOPPED_RUNS = [("SIGINT", []), ("SIGTERM", ["--ema", "0.5"]),
                ("SIGKILL", ["--clean-epochs", "1", "--bf16"])]  # resumed at the clean one


def stop_a_run_in_its_third_epoch(signal_name, flags):
    def stop(folder, mnist):
        process = start_training(mnist, folder / "m.pt", "--epochs", 3, "--log",
                                 folder / "log.csv", *flags)
        _, err = stop_after_epoch(process, 2, getattr(signal, signal_name))
        return folder, process.returncode, err
    return stop


if hasattr(signal, "SIGKILL"):  # posix_signals skips the test elsewhere
    for signal_name, flags in STOPPED_RUNS:
        job("test_a_run_stopped_in_its_third_epoch_leaves_the_second_and_resumes_bit_identical",
            "mnist", key=signal_name)(stop_a_run_in_its_third_epoch(signal_name, flags))


@posix_signals
@pytest.mark.parametrize("signal_name, flags", STOPPED_RUNS)
def test_a_run_stopped_in_its_third_epoch_leaves_the_second_and_resumes_bit_identical(
        capsys, mnist, fresh_interpreters, request, signal_name, flags):
    tmp_path, returncode, err = job_result(fresh_interpreters, request, key=signal_name)
    straight, out, log = tmp_path / "straight.pt", tmp_path / "m.pt", tmp_path / "log.csv"
    with threads_of_a_training_process():
        code, _, run_err = run(capsys, train, "--data-dir", mnist, "--out", straight,
                               *RESUMABLE_RUN, "--epochs", 3, *flags)
    assert code == 0, run_err
    signal_number = getattr(signal, signal_name)
    if signal_number == signal.SIGKILL:
        assert returncode == -signal.SIGKILL and err == ""  # no chance to say a word
    else:  # Ctrl-C, or a cluster's time limit
        assert_one_line_error(returncode, err, "interrupted", "after epoch 2 of 3",
                              f"python train.py --resume {out}")
    saved = torch.load(out, weights_only=True)
    assert saved["epochs_completed"] == 2 and len(saved["metrics"]) == 2
    assert saved["training_state"] is not None  # not finished: it can be resumed
    assert sorted(os.listdir(tmp_path)) == ["log.csv", "m.pt", "straight.pt"]  # no temporary
    assert len(log.read_text().splitlines()) == 3  # the header and both epochs
    code, stdout, _ = run(capsys, evaluate, out, "--data-dir", mnist)
    assert code == 0 and "the model after epoch 2 of 3 (the run is not finished)" in stdout

    with threads_of_a_training_process():
        code, stdout, err = run(capsys, train, "--resume", out, "--data-dir", mnist,
                                "--log", tmp_path / "resumed.csv")
    assert code == 0, err
    assert "resuming after epoch 2 of 3" in stdout
    expected, got = (torch.load(path, weights_only=True) for path in (straight, out))
    assert got["epochs_completed"] == 3 and got["training_state"] is None
    assert timeless(got["metrics"]) == timeless(expected["metrics"])
    for name, weights in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], weights), name
    # The log of the resumed run has every epoch, the first two included.
    assert [row.split(",")[0] for row in (tmp_path / "resumed.csv").read_text().split()] == [
        "epoch", "1", "2", "3"]


# --hidden 384 256 is the default, not the run's own --hidden 32: given, it is a change.
@pytest.mark.parametrize("flags", [["--lr", "0.01"], ["--epochs", "10"], ["--no-augment"],
                                   ["--dataset", "fashion-mnist"], ["--seed", "1"], ["--bf16"],
                                   ["--hidden", "384", "256"]])
def test_resume_refuses_a_flag_that_would_change_the_run(capsys, mnist, tmp_path,
                                                         interrupted_run, flags):
    out = tmp_path / "run.pt"
    shutil.copy(interrupted_run, out)
    before = out.read_bytes()
    code, stdout, err = run(capsys, train, "--resume", out, "--data-dir", mnist, *flags)
    assert_one_line_error(code, err, flags[0], "leave")
    assert out.read_bytes() == before and "epoch  train loss" not in stdout


def test_resume_may_change_where_the_data_and_the_output_are(capsys, mnist, tmp_path,
                                                            monkeypatch):
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys)
    elsewhere = tmp_path / "elsewhere.pt"
    code, _, err = run(capsys, train, "--resume", out, "--data-dir", mnist, "--device", "cpu",
                       "--out", elsewhere, "--hidden", 32)  # the run's own value is no change
    assert code == 0, err
    assert torch.load(elsewhere, weights_only=True)["epochs_completed"] == 3
    assert torch.load(out, weights_only=True)["epochs_completed"] == 1  # left as it was


def test_a_resumed_run_whose_log_folder_is_gone_is_refused_before_it_trains(
        capsys, mnist, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    logs.mkdir()
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys, "--log", logs / "log.csv")
    shutil.rmtree(logs)
    before = out.read_bytes()
    code, stdout, err = run(capsys, train, "--resume", out, "--data-dir", mnist)
    assert code == 2
    assert_one_line_error(code, err, "argument --log", f"folder {logs} does not exist", str(out))
    assert out.read_bytes() == before and "epoch  train loss" not in stdout
    # and where the checkpoint itself can no longer be written (a --log given elsewhere)
    logs.mkdir()
    real_probe = cli.tempfile.TemporaryFile

    def read_only(dir):
        if dir == str(out.parent):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_probe(dir=dir)

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", read_only)
    code, stdout, err = run(capsys, train, "--resume", out, "--data-dir", mnist, "--log",
                            logs / "log.csv")
    assert_one_line_error(code, err, "argument --resume", "Permission denied")
    assert out.read_bytes() == before and "epoch  train loss" not in stdout


def test_a_default_the_command_line_replaces_is_never_checked(tmp_path, monkeypatch):
    """A check that writes a probe file into an output's folder, or asks for the
    machine's GPU, runs for the values given, never for the defaults they replace
    (--out model.pt in the working folder, --device auto)."""
    probed, devices = [], []
    real_probe, real_device = cli.tempfile.TemporaryFile, cli.device
    monkeypatch.setattr(cli.tempfile, "TemporaryFile",
                        lambda dir: probed.append(dir) or real_probe(dir=dir))
    monkeypatch.setattr(cli, "device", lambda name: devices.append(name) or real_device(name))
    (tmp_path / "logs").mkdir()
    train.parse_args(["--out", str(tmp_path / "m.pt"), "--log", str(tmp_path / "logs" / "l.csv"),
                      "--device", "cpu"])
    assert set(probed) == {str(tmp_path), str(tmp_path / "logs")} and set(devices) == {"cpu"}
    probed.clear(), devices.clear()
    monkeypatch.chdir(tmp_path)
    train.parse_args([])  # --out model.pt and --device auto, the defaults
    assert probed == ["."] and devices == ["auto"]


def test_main_gives_sigterm_back_to_its_caller(capsys, mnist, tmp_path):
    """Inside the run SIGTERM stops it as Ctrl-C does; after main returns, the
    calling process (a notebook, these tests) has its own handler back."""
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = run(capsys, train, "--data-dir", mnist, "--out", tmp_path / "m.pt",
                       *RESUMABLE_RUN, "--epochs", 1)
    assert code == 0, err
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_stays_on_the_runs_own_device_unless_told(capsys, mnist, tmp_path,
                                                         monkeypatch):
    """A CPU run resumed where there is a GPU stays on the CPU (where --device's
    default would pick the GPU); a GPU run resumed where there is none goes on
    the CPU."""
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert train.parse_args(["--resume", str(out)])[0].device == torch.device("cpu")
    assert train.parse_args(["--resume", str(out), "--device", "cuda"])[0].device == \
        torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from_a_gpu = torch.load(out, weights_only=True)
    from_a_gpu["train_args"]["device"] = "cuda:0"
    torch.save(from_a_gpu, out)
    assert train.parse_args(["--resume", str(out)])[0].device == cli.device("auto")


def test_a_run_records_its_threads_and_resume_keeps_them_unless_told(capsys, mnist, tmp_path,
                                                                      monkeypatch):
    """The thread count changes the order of sums, so the weights: a run records
    it, and --resume computes with it again, unless --threads or the user's
    OMP_NUM_THREADS says otherwise, which the run then names in a note."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys)
    assert torch.load(out, weights_only=True)["train_args"]["threads"] == torch.get_num_threads()
    stored = torch.get_num_threads()
    assert train.parse_args(["--resume", str(out)])[0].threads == stored
    assert train.parse_args(["--resume", str(out), "--threads", "3"])[0].threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert train.parse_args(["--resume", str(out)])[0].threads is None  # torch's: the user's
    monkeypatch.delenv("OMP_NUM_THREADS")
    try:
        code, stdout, err = run(capsys, train, "--resume", out, "--data-dir", mnist,
                                "--threads", stored + 1)
    finally:
        torch.set_num_threads(stored)
    assert code == 0, err
    assert (f"note: the run continues on {stored + 1} CPU threads, not its own {stored}: its "
            f"sums, and so its weights, will differ a little") in stdout


def test_a_run_moved_from_a_gpu_to_the_cpu_resumes(capsys, mnist, tmp_path, monkeypatch):
    """A CUDA generator's state (16 bytes of Philox) cannot be set on a CPU
    generator: the distortions continue from a fresh draw, and the run goes on."""
    out = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys)
    from_a_gpu = torch.load(out, weights_only=True)
    from_a_gpu["train_args"]["device"] = "cuda:0"
    from_a_gpu["training_state"]["random"]["augmentation"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(from_a_gpu, out)
    code, stdout, err = run(capsys, train, "--resume", out, "--data-dir", mnist, "--device", "cpu")
    assert code == 0, err
    assert "moves from cuda:0 to cpu" in stdout
    assert torch.load(out, weights_only=True)["epochs_completed"] == 3


def test_resuming_a_finished_run_says_so(capsys, checkpoint, mnist):
    before = open(checkpoint, "rb").read()
    code, stdout, _ = run(capsys, train, "--resume", checkpoint, "--data-dir", mnist)
    assert code == 0 and "a finished run (2 of 2 epochs): nothing to resume" in stdout
    assert open(checkpoint, "rb").read() == before


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("truncated", "not a readable checkpoint"),
    ("not ours", "not a checkpoint saved by train.py"),
    ("older format", "another version of train.py"),
    ("foreign training state", "training state does not fit"),
])
def test_resume_of_a_bad_checkpoint_is_one_line_and_trains_nothing(
        capsys, mnist, tmp_path, monkeypatch, case, message):
    good = in_progress_checkpoint(mnist, tmp_path, monkeypatch, capsys)
    path = checkpoint_files(tmp_path, good)[case]
    before = path.read_bytes() if path.exists() else None
    code, stdout, err = run(capsys, train, "--resume", path, "--data-dir", mnist)
    assert_one_line_error(code, err, str(path), message)
    assert "epoch  train loss" not in stdout
    assert (path.read_bytes() if path.exists() else None) == before


def test_a_crafted_checkpoint_given_to_resume_runs_no_code(capsys, checkpoint, mnist, tmp_path):
    marker = tmp_path / "code_ran"
    crafted = torch.load(checkpoint, weights_only=True)
    crafted["training_state"] = {"optimizer": RunsCode(str(marker))}
    torch.save(crafted, tmp_path / "crafted.pt")
    code, _, err = run(capsys, train, "--resume", tmp_path / "crafted.pt", "--data-dir", mnist)
    assert_one_line_error(code, err, "refused")
    assert not marker.exists()
