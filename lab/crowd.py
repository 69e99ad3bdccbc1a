"""A class drawing at once: how draw.py's server holds up under a crowd.

    python -m lab.crowd model.pt                          # 1, 10 and 100 drawers
    python -m lab.crowd model.pt --drawers 50 --requests 20

For each number of drawers, a fresh `python -m lab.draw model.pt` is started on a
free port of 127.0.0.1 and that many drawers draw at once: each sends a drawing
to POST /predict as soon as it has the answer to its last, as the page does,
until it has sent --requests of them. Prints the answers per second, the time
each answer took (median and 99th percentile), the requests that failed and the
server's peak memory. The drawers are threads of this process, on the same
machine as the server, as a crowd's browsers are not: the figures are what a
machine that also runs the crowd gives, a lower bound for the server alone.
"""

import sys

if not __package__:  # python lab/crowd.py: Python would look for cli.py and the rest in lab/
    sys.exit("run it from the project's folder as a module: python -m lab.crowd "
             + " ".join(sys.argv[1:]))

import http.client
import io
import os
import random
import statistics
import subprocess
import threading
import time

from PIL import Image, ImageDraw

import cli
from checkpoint import CheckpointError, load_checkpoint
from lab import PROJECT_FOLDER

CANVAS = 400  # the page's canvas, in pixels
PEN_WIDTH = 18  # the page's pen, in the canvas's pixels


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        prog="python -m lab.crowd",
        description="Measure draw.py's server under many drawers.")
    parser.add_argument("checkpoint", help="a model file written by train.py, e.g. model.pt")
    parser.add_argument("--drawers", type=cli.positive_int, nargs="+", default=[1, 10, 100],
                        help="how many draw at once; one measurement each (default 1 10 100)")
    parser.add_argument("--requests", type=cli.positive_int, default=10,
                        help="drawings each drawer sends, one after the other (default 10)")
    parser.add_argument("--new-connections", action="store_true",
                        help="a new connection for every drawing, as a client without "
                             "keep-alive makes (default: one per drawer, as a browser keeps)")
    return parser.parse_args(argv)


def scribble(rng):
    """A PNG like the page sends: black strokes of its pen on its white canvas."""
    canvas = Image.new("RGBA", (CANVAS, CANVAS), "white")
    points = [(rng.randint(80, 320), rng.randint(60, 340)) for _ in range(rng.randint(3, 6))]
    ImageDraw.Draw(canvas).line(points, fill="black", width=PEN_WIDTH, joint="curve")
    png = io.BytesIO()
    canvas.save(png, format="PNG")
    return png.getvalue()


def start_server(checkpoint):
    """`python -m lab.draw` on a free port: the process and its port."""
    server = subprocess.Popen([sys.executable, "-m", "lab.draw", os.path.abspath(checkpoint),
                               "--port", "0"], cwd=PROJECT_FOLDER,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = server.stdout.readline()  # draw at http://127.0.0.1:PORT/ ...
    if "http://" not in line:
        server.wait()
        reason = server.stderr.read().strip().removeprefix("error: ")
        raise SystemExit(f"error: draw.py did not start: {reason}")
    return server, int(line.split("http://")[1].split("/")[0].split(":")[1])


def peak_memory_mib(pid):
    """A process's peak resident memory (Linux), or None where /proc is not."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def draw_at_once(port, drawers, requests, new_connections):
    """`drawers` threads, each sending `requests` drawings, one after another.
    Returns each answered request's seconds, the failures, and the wall time."""
    drawings = [scribble(random.Random(i)) for i in range(20)]
    seconds, failures = [], []
    start = threading.Barrier(drawers + 1)

    def drawer(number):
        connection = None
        start.wait()
        for i in range(requests):
            began = time.perf_counter()
            try:
                if connection is None or new_connections:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                connection.request("POST", "/predict", drawings[(number + i) % len(drawings)],
                                   {"Content-Type": "image/png"})
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise http.client.HTTPException(f"status {response.status}")
                seconds.append(time.perf_counter() - began)
            except (OSError, http.client.HTTPException) as error:
                failures.append(type(error).__name__)
                connection = None
            if new_connections and connection is not None:
                connection.close()
        if connection is not None:
            connection.close()

    threads = [threading.Thread(target=drawer, args=(n,)) for n in range(drawers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return seconds, failures, time.perf_counter() - began


def main(argv=None):
    args = parse_args(argv)
    try:
        load_checkpoint(args.checkpoint)  # a bad file is one line, before the table
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    print(f"{'drawers':>7}  {'requests':>8}  {'answers/s':>9}  {'p50':>7}  {'p99':>7}  "
          f"{'failed':>6}  server peak memory  "
          f"({'new connection each' if args.new_connections else 'keep-alive'})")
    for drawers in args.drawers:
        server, port = start_server(args.checkpoint)
        try:
            seconds, failures, wall = draw_at_once(port, drawers, args.requests,
                                                   args.new_connections)
            memory = peak_memory_mib(server.pid)
        finally:
            server.terminate()
            server.wait()
        p50, p99 = (statistics.quantiles(seconds, n=100)[i] if len(seconds) > 1
                    else (seconds or [float("nan")])[0] for i in (49, 98))
        shown = "" if memory is None else f"{memory:,.0f} MiB"
        print(f"{drawers:7d}  {drawers * args.requests:8d}  {len(seconds) / wall:9.1f}  "
              f"{1000 * p50:5.0f}ms  {1000 * p99:5.0f}ms  {len(failures):6d}  {shown:>18}",
              flush=True)
        if failures:
            kinds = ", ".join(f"{failures.count(kind)} {kind}" for kind in sorted(set(failures)))
            print(f"         failed: {kinds}")


if __name__ == "__main__":
    cli.run(main)
