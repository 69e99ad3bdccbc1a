"""Every OS collects every test: those that need what Windows lacks skip there."""


import os

import pytest
from conftest import PROJECT, job, job_result, run_command

# ----------------------------------------------------------------------------
# Every OS collects every test: those that need what Windows lacks skip there

# Windows' standard library, as far as these tests can tell: no POSIX signals
# or process calls, and none of the Unix-only modules.
WINDOWS_STDLIB = """
import os, signal, sys
for name in ("SIGKILL", "SIGHUP", "SIGQUIT", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGCHLD",
             "SIGPIPE", "SIGCONT", "SIGSTOP", "SIGTSTP", "alarm", "setitimer", "getitimer",
             "pause", "pthread_kill", "pthread_sigmask", "siginterrupt", "sigpending", "sigwait"):
    if hasattr(signal, name):
        delattr(signal, name)
for name in ("fork", "forkpty", "getuid", "geteuid", "getgid", "getegid", "getgroups", "setsid",
             "setpgid", "getpgid", "killpg", "setuid", "setgid", "nice", "wait3", "wait4", "sync",
             "getloadavg", "sched_getaffinity"):
    if hasattr(os, name):
        delattr(os, name)
for name in ("resource", "fcntl", "termios", "pwd", "grp"):
    sys.modules[name] = None  # import refused
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider"]))
"""


class Collected:
    """A pytest plugin that counts the tests a session collects."""

    def pytest_collection_finish(self, session):
        self.count = len(session.items)


@job("test_every_test_is_collected_with_windows_standard_library")
def collect_with_windows_standard_library(folder):
    return run_command("-c", WINDOWS_STDLIB)


def test_every_test_is_collected_with_windows_standard_library(capsys, fresh_interpreters,
                                                              request):
    here = Collected()
    pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider",
                 os.path.join(PROJECT, "test_mnist.py"), os.path.join(PROJECT, "tests")],
                plugins=[here])
    capsys.readouterr()
    assert here.count > 200
    windows = job_result(fresh_interpreters, request)
    assert windows.returncode == 0, windows.stdout[-2000:] + windows.stderr
    assert f"{here.count} tests collected" in windows.stdout.splitlines()[-1]
