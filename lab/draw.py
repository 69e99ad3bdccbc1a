"""Draw a digit in your browser and watch the network answer while you draw.

    python -m lab.draw model.pt                  # then open http://127.0.0.1:8000/
    python -m lab.draw model.pt --port 8080
    python -m lab.draw model.pt --host 0.0.0.0   # on purpose: anyone on your network may draw

The page, draw.html, sends the canvas as a PNG to POST /predict as you draw. The
drawing is prepared exactly as predict.py prepares a photo, and the answer holds
the ten class probabilities and the 28 x 28 image the model saw. In its row mode
(a wider canvas, for a ZIP code or a phone number) it sends POST /row, and the
answer holds those of each digit found, as predict.py finds them in a photo. The server is
the standard library's http.server: it serves that page and that answer, nothing
else, to a whole class at once if need be (crowd.py measures it), and it is
meant for your own machine or your own network, not for the internet.
"""

import sys

if not __package__:  # python lab/draw.py: Python would look for cli.py and the rest in lab/
    sys.exit("run it from the project's folder as a module: python -m lab.draw "
             + " ".join(sys.argv[1:]))

import errno
import io
import ipaddress
import json
import os
import socket
import warnings
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from PIL import Image, UnidentifiedImageError

import cli
from checkpoint import CheckpointError, load_checkpoint
from lab import predict

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "draw.html")
# A 400 x 400 canvas is a PNG of about 14 KB (Chromium's; EXPERIMENTS.md), the
# row mode's 1,000 x 300 a few times that: a megabyte is not a drawing.
MAX_BODY = 1_000_000
# The page sends its 400 x 400 canvas (1,000 x 300 for a row); the margin is for
# a browser that sends more. Larger PNGs are refused from their header: a small file can hold a
# 10,000 x 10,000 image: one of 418 KB took 5.6-6.6 s and 388 MB to read here
# (predict.read_image, on two shared cores of a Zen 3).
MAX_DRAWING_SIDE = 1024


port = cli.number(int, lambda value: 0 <= value <= 65535, "a whole number in [0, 65535]")


def parse_args(argv=None):
    parser = cli.ArgumentParser(
        prog="python -m lab.draw",
        description="Draw digits in your browser for a trained model. "
                    "The model answers on the CPU: a drawing is one small image, "
                    "answered there sooner than a GPU would take it.")
    parser.add_argument("checkpoint", help="a model file written by train.py, e.g. model.pt")
    parser.add_argument("--port", type=port, default=8000,
                        help="the port to serve on (default 8000; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to serve on (default 127.0.0.1, this machine "
                             "alone; 0.0.0.0: every network it is on, IPv4)")
    return parser.parse_args(argv)


def page(checkpoint):
    """draw.html, told what the model is: its data set, classes and accuracy."""
    about = {"dataset": checkpoint["dataset"], "classes": checkpoint["classes"],
             "hidden": checkpoint["config"]["hidden"],
             "val_accuracy": checkpoint["metrics"][-1]["val_accuracy"]
             if checkpoint["metrics"] else None}
    # "<" escaped, so that no class name can end the <script> it is written into.
    about = json.dumps(about).replace("<", "\\u003c")
    with open(PAGE, encoding="utf-8") as f:
        return f.read().replace("MODEL_DESCRIPTION", about).encode()


def check_drawing(png):
    """predict.ImageError unless `png` is a PNG of at most MAX_DRAWING_SIDE
    pixels a side, read from its header alone: PIL's open decodes nothing."""
    try:
        with warnings.catch_warnings():  # PIL warns of large images; we refuse them
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(png)) as image:
                kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError:
        raise predict.ImageError("far too large for a drawing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise predict.ImageError("not an image (PNG expected)") from None
    if kind != "PNG":
        raise predict.ImageError(f"a {kind} image: the page sends PNG")
    if max(width, height) > MAX_DRAWING_SIDE:
        raise predict.ImageError(f"{width:,} x {height:,} pixels is not a drawing of the "
                                 f"page's (at most {MAX_DRAWING_SIDE:,} a side)")


def answer(model, checkpoint, png):
    """What the model makes of a drawing (a PNG's bytes): the probability of each
    class, and the 28 x 28 grey levels (0 to 255) it saw; predict.ImageError if
    the PNG cannot be read or holds no drawing."""
    gray, _ = predict.read_image(png)
    digit = predict.prepare(gray)
    probabilities = predict.class_probabilities(model, digit[None], checkpoint["normalization"])[0]
    return {"probabilities": probabilities.tolist(),
            "seen": (digit * 255).round().int().flatten().tolist()}


def answer_row(model, checkpoint, png):
    """What the model makes of a row of digits drawn: for each digit found, left
    to right, its answer as answer() gives it, and whether it is uncertain."""
    gray, _ = predict.read_image(png)
    return {"digits": [{"probabilities": probabilities.tolist(),
                        "seen": (digit * 255).round().int().flatten().tolist(),
                        "uncertain": uncertain}
                       for digit, probabilities, uncertain in predict.read_digits(
                           gray, model, checkpoint)]}


class Server(ThreadingHTTPServer):
    """http.server's server, a thread for each connection, made for a class:
    up to 1,024 new connections wait to be accepted, where http.server's 5
    made the kernel refuse the rest of a crowd (27 % of 100 drawers' drawings,
    268 of 1,000, the median of three runs in EXPERIMENTS.md)."""
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        """A traceback on the terminal, except for a client that left midway:
        a closed tab is no fault of the server's."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def address_for_others(host):
    """The address that the other machines of the network open for a server
    on `host`: `host` itself, or for 0.0.0.0 (every address of this one) the
    address this machine reaches its network by."""
    if host != "0.0.0.0":
        return host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            # Connecting a UDP socket sends nothing: it only picks the address
            # that packets to the network would leave from.
            probe.connect(("192.0.2.1", 9))  # an address for examples, never used
            return probe.getsockname()[0]
        except OSError:  # no route to any network
            return socket.gethostbyname(socket.gethostname())


def handler(model, checkpoint):
    """The request handler class, serving this model."""
    html = page(checkpoint)
    # The drawings are answered by one thread per core, first come, first
    # served (the pool's queue). A hundred answered at once, each in its
    # connection's thread, took 1.1 GB and kept the unluckiest waiting 2.84 s
    # (p99); this way, 550 MiB and 0.96 s (EXPERIMENTS.md, docs/digits.md).
    answering = ThreadPoolExecutor(os.cpu_count() or 1)

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds a stalled client may hold its thread
        # Keep-alive: a browser sends drawing after drawing on one connection.
        protocol_version = "HTTP/1.1"
        # The headers and the body are two writes: with Nagle's algorithm, the
        # body would wait for the client's delayed acknowledgement, 40 ms.
        disable_nagle_algorithm = True

        def do_GET(self):
            if self.path != "/":
                return self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})
            self.send(HTTPStatus.OK, "text/html; charset=utf-8", html)

        def do_POST(self):
            answers = {"/predict": answer, "/row": answer_row}
            if self.path not in answers:
                return self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})
            try:
                length = int(self.headers["Content-Length"])
            except (TypeError, ValueError):  # missing, or not a number
                self.close_connection = True
                return self.send_json(HTTPStatus.LENGTH_REQUIRED,
                                      {"error": "the request needs a Content-Length"})
            if not 0 < length <= MAX_BODY:  # refused before a byte of it is read
                self.close_connection = True  # the unread body must not be a next request
                return self.send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > 0
                                      else HTTPStatus.BAD_REQUEST,
                                      {"error": f"send a PNG of 1 to {MAX_BODY:,} bytes"})
            png = self.rfile.read(length)
            if len(png) < length:  # the client left before it had sent it all
                self.close_connection = True
                return
            try:
                check_drawing(png)  # before it waits its turn: a refusal is quick
                result = answering.submit(answers[self.path], model, checkpoint, png).result()
            except predict.NoInk:  # an empty canvas
                return self.send_json(HTTPStatus.BAD_REQUEST, {"error": "draw a digit first"})
            except predict.ImageError as error:
                return self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            self.send_json(HTTPStatus.OK, result)

        def send_error(self, code, message=None, explain=None):
            """http.server's own refusals as one line of JSON too. An unknown method
            is its 501, "not implemented"; here it is 405, a method not allowed."""
            if code == HTTPStatus.NOT_IMPLEMENTED:
                code, message = HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not served"
            self.close_connection = True  # as http.server's own does: a body may be unread
            self.send_json(code, {"error": message or HTTPStatus(code).phrase})

        def send_json(self, status, body):
            self.send(status, "application/json", json.dumps(body).encode())

        def send(self, status, content_type, body):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):
            pass  # a line per request would scroll by many times a second while drawing

    return Handler


def main(argv=None):
    args = parse_args(argv)
    try:
        model, checkpoint = load_checkpoint(args.checkpoint)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    model.eval()
    # One thread per drawing. Two save a few milliseconds on an idle machine, but
    # while the browser or anything else keeps a core busy, handing a small job
    # between threads makes each answer up to ten times slower. Several drawings
    # are still answered at once, one per core (the pool in handler).
    torch.set_num_threads(1)
    try:
        server = Server((args.host, args.port), handler(model, checkpoint))
    except OSError as error:  # the port is taken, or the host is not this machine's
        hint = "; --port 0 picks a free one" if error.errno == errno.EADDRINUSE else ""
        sys.exit(f"error: cannot serve on {args.host}:{args.port}: {error.strerror}{hint}")
    host, chosen_port = server.server_address[:2]
    if ipaddress.ip_address(host).is_loopback:
        print(f"draw at http://{host}:{chosen_port}/   (Ctrl-C stops)", flush=True)
    else:
        print(f"draw at http://{address_for_others(host)}:{chosen_port}/   (anyone who can "
              f"reach this address may draw; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()


if __name__ == "__main__":
    cli.run(main)
