"""Draw a digit in your browser and watch the network answer while you draw.

    python draw.py model.pt                  # then open http://127.0.0.1:8000/
    python draw.py model.pt --port 8080
    python draw.py model.pt --host 0.0.0.0   # on purpose: anyone on your network may draw

The page, draw.html, sends the canvas as a PNG to POST /predict as you draw. The
drawing is prepared exactly as predict.py prepares a photo, and the answer holds
the ten class probabilities and the 28 x 28 image the model saw. The server is
the standard library's http.server: it serves that page and that answer, nothing
else, and it is meant for your own machine, not for the internet.
"""

import argparse
import json
import os
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

import cli
import predict
from checkpoint import CheckpointError, load_checkpoint

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "draw.html")
# A 400 x 400 canvas is a PNG of 10 to 30 KB; a megabyte is not a drawing.
MAX_BODY = 1_000_000


def port(text):
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535], got {text}")
    return value


def parse_args(argv=None):
    parser = cli.ArgumentParser(description="Draw digits in your browser for a trained model.")
    parser.add_argument("checkpoint", help="a model file written by train.py, e.g. model.pt")
    parser.add_argument("--port", type=port, default=8000,
                        help="the port to serve on (default 8000; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to serve on: 127.0.0.1 is this machine alone, "
                             "0.0.0.0 every network it is on")
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


def answer(model, checkpoint, png):
    """What the model makes of a drawing (a PNG's bytes): the probability of each
    class, and the 28 x 28 grey levels (0 to 255) it saw; predict.ImageError if
    the PNG cannot be read or holds no drawing."""
    gray, _ = predict.read_image(png)
    digit = predict.prepare(gray)
    probabilities = predict.class_probabilities(model, digit, checkpoint["normalization"])
    return {"probabilities": probabilities.tolist(),
            "seen": (digit * 255).round().int().flatten().tolist()}


def handler(model, checkpoint):
    """The request handler class, serving this model."""
    html = page(checkpoint)

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds a stalled client may hold its thread

        def do_GET(self):
            if self.path != "/":
                return self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})
            self.send(HTTPStatus.OK, "text/html; charset=utf-8", html)

        def do_POST(self):
            if self.path != "/predict":
                return self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {self.path}"})
            try:
                length = int(self.headers["Content-Length"])
            except (TypeError, ValueError):  # missing, or not a number
                return self.send_json(HTTPStatus.LENGTH_REQUIRED,
                                      {"error": "the request needs a Content-Length"})
            if not 0 < length <= MAX_BODY:  # refused before a byte of it is read
                return self.send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > 0
                                      else HTTPStatus.BAD_REQUEST,
                                      {"error": f"send a PNG of 1 to {MAX_BODY:,} bytes"})
            try:
                result = answer(model, checkpoint, self.rfile.read(length))
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
    # between threads makes each answer up to ten times slower. Several tabs are
    # still answered at once, each in its own thread.
    torch.set_num_threads(1)
    try:
        server = ThreadingHTTPServer((args.host, args.port), handler(model, checkpoint))
    except OSError as error:  # the port is taken, or the host is not this machine's
        sys.exit(f"error: cannot serve on {args.host}:{args.port}: {error.strerror}")
    host, chosen_port = server.server_address[:2]
    print(f"draw at http://{host}:{chosen_port}/   (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()


if __name__ == "__main__":
    cli.run(main)
