"""lab/draw.py: the drawing page's server, a class at once (lab/crowd.py), and
the page in a real browser."""

import base64
import http.client
import json
import os
import random
import socket
import sys
import threading
import time
from io import BytesIO

import pytest
from conftest import (
    assert_one_line_error,
    assert_one_line_of_json,
    drawing,
    http_request,
    job,
    job_result,
    pen_strokes,
    png,
    row_strokes,
    run,
    run_command,
)
from PIL import Image

import data
from checkpoint import load_checkpoint
from lab import crowd, draw, predict

# ----------------------------------------------------------------------------
# draw.py: a digit drawn in the browser, and predict.py's widening of thin strokes
#
# The model trained on the blobs above cannot read drawn digits, so these tests
# train their own in a few seconds on digits drawn as pen strokes: each of the
# ten as a few lines and arcs, at random places, sizes, slants and pen widths
# (the drawn digits, their model and the server: in conftest.py).
# The browser test needs Chromium, its driver and selenium (.ci/run installs them):
# apt-get install chromium chromium-driver; pip install selenium


# ----------------------------------------------------------------------------
# The server, without a browser

def model_description(page):
    """What the page is told about the model: the JSON that draw.py writes into it."""
    return json.loads(page.split("const model = ")[1].split(";\n")[0])


def test_the_page_describes_the_model_and_nothing_else_is_served(server):
    status, page = http_request(server, "GET", "/")
    assert status == 200
    about = model_description(page)
    assert about["dataset"] == "mnist" and about["classes"] == list("0123456789")
    assert 0.9 < about["val_accuracy"] <= 1 and about["hidden"] == [64]
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    for path in ("/../README.md", "/draw.html", "/draw.py", "/predict.py", "/index.html",
                 "/?", "//etc/passwd"):
        assert_one_line_of_json(*http_request(server, "GET", path), 404, "no page")
    assert_one_line_of_json(*http_request(server, "POST", "/", b"x"), 404, "no page")
    for method in ("PUT", "DELETE", "PATCH"):
        assert_one_line_of_json(*http_request(server, method, "/predict", b"x"), 405, "not served")


def test_a_fashion_mnist_model_is_described_with_its_own_classes(drawn_digit_model):
    _, checkpoint = load_checkpoint(drawn_digit_model)
    classes = data.DATASETS["fashion-mnist"]["classes"][:9] + ["</script><b>boot"]
    page = draw.page({**checkpoint, "dataset": "fashion-mnist", "classes": classes,
                      "metrics": [{"epoch": 1, "val_accuracy": None}]}).decode()
    about = model_description(page)
    assert about["dataset"] == "fashion-mnist" and about["classes"][6] == "Shirt"
    assert about["classes"][9] == "</script><b>boot" and about["val_accuracy"] is None
    assert page.count("</script>") == 1  # a class name cannot end the page's script


def test_bad_drawings_are_one_line_of_json_and_the_server_goes_on(server):
    assert_one_line_of_json(*http_request(server, "POST", "/predict", b"not a picture"),
                            400, "not an image")
    blank = png(Image.new("RGB", (400, 400), "white"))
    assert_one_line_of_json(*http_request(server, "POST", "/predict", blank), 400,
                            "draw a digit first")
    transparent = png(Image.new("RGBA", (400, 400), (0, 0, 0, 0)))  # an unpainted canvas
    assert_one_line_of_json(*http_request(server, "POST", "/predict", transparent), 400,
                            "draw a digit first")
    assert_one_line_of_json(*http_request(server, "POST", "/predict", b""), 400, "send a PNG")
    # A body said to be too large is refused before any of it is read.
    with socket.create_connection(server) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 50000000\r\n\r\n")
        answer = connection.makefile("rb").read().decode()  # and the connection is closed
    assert answer.startswith("HTTP/1.1 413") and '"error": "send a PNG of 1 to' in answer
    with socket.create_connection(server) as connection:
        connection.sendall(b"POST /predict HTTP/1.0\r\n\r\n")
        assert connection.makefile("rb").read().startswith(b"HTTP/1.1 411")
    seven = png(drawing(pen_strokes(7, random.Random(1), 400), 20, 400))
    status, answer = http_request(server, "POST", "/predict", seven)
    assert status == 200 and max(range(10), key=answer["probabilities"].__getitem__) == 7


def test_the_answer_is_predict_py_s(capsys, server, drawn_digit_model, tmp_path):
    for digit in (2, 5, 8):
        path = tmp_path / f"{digit}.png"
        drawing(pen_strokes(digit, random.Random(digit), 400), 6, 400).save(path)
        status, answer = http_request(server, "POST", "/predict", path.read_bytes())
        assert status == 200
        code, out, _ = run(capsys, predict, drawn_digit_model, path)
        ranking = sorted(zip(answer["probabilities"], "0123456789"), reverse=True)[:3]
        assert code == 0 and out == f"{path}: {digit}   (" + ", ".join(
            f"{name} {100 * p:.1f}%" for p, name in ranking) + ")\n"
        seen = predict.prepare(predict.read_image(str(path))[0])
        assert answer["seen"] == (seen * 255).round().int().flatten().tolist()


def test_several_tabs_drawing_at_once_are_all_answered(server):
    drawings = [png(drawing(pen_strokes(digit, random.Random(digit), 400), 12, 400))
                for digit in range(8)]
    alone = [http_request(server, "POST", "/predict", body)[1] for body in drawings]
    together = [None] * 8
    start = threading.Barrier(8)

    def ask(i):
        start.wait()
        together[i] = http_request(server, "POST", "/predict", drawings[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == [(200, answer) for answer in alone]
    assert [max(range(10), key=a["probabilities"].__getitem__) for a in alone] == [
        0, 1, 2, 3, 4, 5, 6, 7]


def serve_until_ctrl_c(capsys, monkeypatch, *argv):
    """draw.py's main(argv) in this process, its server answering in a thread
    until Ctrl-C: stopped (KeyboardInterrupt, where serve_forever waits) once a
    page has been asked of the address its start line names. Returns (exit code,
    that line, the page's status, what followed the line, stderr)."""
    asked = {}

    def serve_then_ctrl_c(server):
        thread = threading.Thread(target=draw.ThreadingHTTPServer.serve_forever,
                                  args=(server, 0.01))
        thread.start()
        try:
            asked["line"] = capsys.readouterr().out
            address = asked["line"].split("http://")[1].split("/")[0]
            host, port = address.rsplit(":", 1)
            asked["status"] = http_request((host, int(port)), "GET", "/")[0]
        finally:
            server.shutdown()
            thread.join()
        raise KeyboardInterrupt

    monkeypatch.setattr(draw.Server, "serve_forever", serve_then_ctrl_c)
    try:
        code, out, err = run(capsys, draw, *argv)
    except KeyboardInterrupt:  # (which would stop pytest itself)
        pytest.fail("Ctrl-C ended draw.py with a traceback, not its one line")
    return code, asked["line"], asked["status"], out, err


def test_ctrl_c_stops_the_server_with_one_line(capsys, monkeypatch, drawn_digit_model):
    code, line, status, out, err = serve_until_ctrl_c(capsys, monkeypatch, drawn_digit_model,
                                                      "--port", 0)
    assert line.startswith("draw at http://127.0.0.1:") and status == 200
    assert (code, out, err) == (0, "stopped\n", "")


def test_a_bad_checkpoint_port_or_address_is_one_line(capsys, server, drawn_digit_model,
                                                      tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(*run(capsys, draw, tmp_path / "junk.pt")[::2], "not a readable")
    assert_one_line_error(*run(capsys, draw, tmp_path / "missing.pt")[::2], "no such file")
    good = drawn_digit_model
    assert_one_line_error(*run(capsys, draw, good, "--port", server[1])[::2],
                          f"cannot serve on 127.0.0.1:{server[1]}", "in use",
                          "--port 0 picks a free one")
    assert_one_line_error(*run(capsys, draw, good, "--port", 70000)[::2], "--port")
    assert_one_line_error(*run(capsys, draw, good, "--port", "http")[::2], "--port")
    assert_one_line_error(*run(capsys, draw, good, "--host", "192.0.2.1")[::2],  # not ours
                          "cannot serve on 192.0.2.1:8000")


# ----------------------------------------------------------------------------
# A class drawing at once

def test_a_crowd_of_drawers_is_all_answered_a_core_s_worth_at_a_time(server, monkeypatch):
    answering, most = set(), []
    answer = draw.answer

    def counted(*args):
        answering.add(threading.get_ident())
        most.append(len(answering))
        try:
            return answer(*args)
        finally:
            answering.discard(threading.get_ident())

    monkeypatch.setattr(draw, "answer", counted)
    for new_connections in (False, True):  # keep-alive, as browsers; a new one each time
        seconds, failures, _ = crowd.draw_at_once(server[1], 30, 3, new_connections)
        assert failures == [] and len(seconds) == 90
    assert len(most) == 180 and max(most) <= (os.cpu_count() or 1)


# http.server's listen queue was 5; draw.py asks for 1,024, which the kernel may
# cap: at 128 on macOS (somaxconn), as Python's socket.SOMAXCONN says there.
CLASS_AT_ONCE = min(150, socket.SOMAXCONN)


def test_a_class_connecting_at_once_is_held_until_the_server_accepts(drawn_digit_model,
                                                                     open_files):
    """A class's connections (150, or as many as the listen queue holds) made
    before the server accepts any: the kernel keeps them waiting (http.server's
    own queue of 5 made it refuse the rest)."""
    open_files(2 * CLASS_AT_ONCE)  # both ends of each connection are in this process
    model, checkpoint = load_checkpoint(drawn_digit_model)
    httpd = draw.Server(("127.0.0.1", 0), draw.handler(model, checkpoint))
    try:
        connections = [socket.create_connection(httpd.server_address, timeout=2)
                       for _ in range(CLASS_AT_ONCE)]
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01})
        thread.start()
        blank = png(Image.new("RGB", (400, 400), "white"))
        for connection in connections[::10]:
            connection.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                               % (len(blank), blank))
            reply = b""
            while not reply.endswith(b"}"):  # the headers, then the JSON
                reply += connection.recv(4096)
            assert b"draw a digit first" in reply
        for connection in connections:
            connection.close()
        httpd.shutdown()
        thread.join()
    finally:
        httpd.server_close()


def test_drawings_on_one_connection_are_answered_on_it_without_delay(server):
    seven = png(drawing(pen_strokes(7, random.Random(1), 400), 20, 400))

    def seconds_per_answer(keep_alive):
        times, sockets = [], set()
        connection = http.client.HTTPConnection(*server, timeout=30)
        for _ in range(7):
            began = time.perf_counter()
            connection.request("POST", "/predict", seven)
            response = connection.getresponse()
            assert response.status == 200 and response.read()
            times.append(time.perf_counter() - began)
            sockets.add(connection.sock)
            if not keep_alive:
                connection.close()
        connection.close()
        assert len(sockets) == (1 if keep_alive else 7)  # kept open, or one per drawing
        return sorted(times)[3]

    # Nagle's algorithm would hold each answer's body back for the client's
    # delayed acknowledgement, 40 ms, on a connection kept open.
    assert seconds_per_answer(keep_alive=True) < seconds_per_answer(keep_alive=False) + 0.02


def big_png(width, height):
    """A PNG of a blank page this size: a few KB, whatever the size."""
    return png(Image.new("1", (width, height), 1))


def test_a_png_larger_than_the_page_s_is_refused_from_its_header(server, monkeypatch):
    decoded = []
    monkeypatch.setattr(predict, "read_image",
                        lambda source: decoded.append(source) or (_ for _ in ()).throw(
                            AssertionError("decoded")))
    huge = big_png(9000, 9000)  # 81 megapixels: 300 ms and 100 MB to decode
    assert len(huge) < draw.MAX_BODY
    began = time.perf_counter()
    status, answer = http_request(server, "POST", "/predict", huge)
    assert time.perf_counter() - began < 0.1
    assert_one_line_of_json(status, answer, 400, "9,000 x 9,000 pixels is not a drawing")
    for width, height in [(1025, 400), (400, 1025)]:
        assert_one_line_of_json(*http_request(server, "POST", "/predict", big_png(width, height)),
                                400, "at most 1,024 a side")
    jpeg = BytesIO()
    Image.new("RGB", (400, 400), "white").save(jpeg, format="JPEG")
    assert_one_line_of_json(*http_request(server, "POST", "/predict", jpeg.getvalue()), 400,
                            "a JPEG image: the page sends PNG")
    assert decoded == []
    # the largest side allowed is decoded and answered
    monkeypatch.undo()
    status, answer = http_request(server, "POST", "/predict",
                             png(drawing(pen_strokes(3, random.Random(3), 1024), 40, 1024)))
    assert status == 200 and len(answer["probabilities"]) == 10


def test_stalled_connections_do_not_hold_up_a_drawing(capsys, server, open_files):
    open_files(2 * 100 + 10)  # both ends of each, in this process
    stalled = []
    for i in range(100):  # each stops halfway through its request, and waits
        connection = socket.create_connection(server, timeout=30)
        connection.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 20000\r\n\r\n"
                           if i % 2 else b"POST /predi")
        stalled.append(connection)
    seven = png(drawing(pen_strokes(7, random.Random(1), 400), 20, 400))
    began = time.perf_counter()
    status, answer = http_request(server, "POST", "/predict", seven)
    assert status == 200 and time.perf_counter() - began < 5  # they wait for 10 s
    for connection in stalled:  # and leave: the server says nothing of it
        connection.close()
    time.sleep(0.5)
    assert http_request(server, "POST", "/predict", seven)[0] == 200
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs to listen on every "
                    "address (0.0.0.0), which Windows and macOS answer with a firewall prompt")
def test_on_a_network_address_the_start_line_names_one_others_can_open(
        capsys, monkeypatch, drawn_digit_model):
    code, line, status, out, err = serve_until_ctrl_c(capsys, monkeypatch, drawn_digit_model,
                                                      "--host", "0.0.0.0", "--port", 0)
    host = line.split("http://")[1].split(":")[0]
    assert host != "0.0.0.0" and "anyone who can reach this address may draw" in line
    assert status == 200  # an address of this machine
    assert (code, out, err) == (0, "stopped\n", "")
    assert draw.address_for_others("10.1.2.3") == "10.1.2.3"  # a given address, as it is


@job("test_crowd_py_reports_a_crowd_s_answers", "drawn_digit_model")
def a_crowd_of_four(folder, drawn_digit_model):
    return run_command("-m", "lab.crowd", drawn_digit_model, "--drawers", 4, "--requests", 3)


def test_crowd_py_reports_a_crowd_s_answers(capsys, fresh_interpreters, request, tmp_path):
    result = job_result(fresh_interpreters, request)
    code, stdout, err = result.returncode, result.stdout, result.stderr
    assert code == 0, err
    header, row = stdout.splitlines()
    assert header.split()[:6] == ["drawers", "requests", "answers/s", "p50", "p99", "failed"]
    assert row.split()[:2] == ["4", "12"] and row.split()[5] == "0"  # none failed
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, stdout, err = run(capsys, crowd, tmp_path / "junk.pt")
    assert_one_line_error(code, err, "not a readable")
    assert stdout == ""  # no table begun

# ----------------------------------------------------------------------------
# The page in a real browser: headless Chromium, driven by selenium
# (the browser fixture: in conftest.py)

def draw_on_the_canvas(driver, digit):
    """Digit `digit`'s strokes drawn with the pointer, as a hand would, then
    wait until the page has the answer to the finished drawing."""
    draw_strokes(driver, pen_strokes(digit, random.Random(digit), 400), 400, 400)


def draw_strokes(driver, strokes, width, height):
    """Strokes in the canvas's own pixels (width x height) drawn with the
    pointer, then wait until the page has the answer to the finished drawing."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    canvas = driver.find_element("id", "canvas")
    scale = canvas.size["width"] / width
    for stroke in strokes:
        # selenium's pointer offsets are whole pixels from the canvas's centre
        points = [(round((x - width / 2) * scale), round((y - height / 2) * scale))
                  for x, y in stroke]
        hand = ActionChains(driver, duration=10).move_to_element_with_offset(canvas, *points[0])
        hand.click_and_hold()
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            hand.move_by_offset(x1 - x0, y1 - y0)
        hand.release().perform()
    # Chrome hands pointer moves to the page with its next frame: two frames on,
    # all have arrived; then wait for the page to have no request on its way.
    driver.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
    WebDriverWait(driver, 30, poll_frequency=0.05).until(
        lambda driver: driver.execute_script("return !asking && !changed"))


def bars(driver):
    """The bars as the page shows them: [(class name, percent text, is on top)]."""
    return [tuple(row) for row in driver.execute_script(
        "return [...document.querySelectorAll('#bars li')].map(row => ["
        "row.querySelector('.name').textContent, row.querySelector('.percent').textContent,"
        "row.classList.contains('top')])")]


def seen(driver):
    """The grey levels of the page's 28 x 28 image of what the model saw."""
    return driver.execute_script(
        "const pixels = document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data;"
        "return [...pixels.filter((_, i) => i % 4 === 0)]")


def canvas_png(driver):
    """The drawing on the page's canvas, as a PNG."""
    url = driver.execute_script("return document.getElementById('canvas').toDataURL()")
    return base64.b64decode(url.split(",")[1])


def test_digits_drawn_in_the_browser_are_answered_as_they_are_drawn(browser, server, tmp_path):
    browser.get(f"http://{server[0]}:{server[1]}/")
    about = browser.find_element("id", "about").text
    assert "(784-64-10) trained on MNIST" in about and "accuracy" in about
    assert [name for name, _, _ in bars(browser)] == list("0123456789")
    for digit in (1, 7, 0):
        draw_on_the_canvas(browser, digit)
        shown = bars(browser)
        percents = [float(percent.rstrip("%")) for _, percent, _ in shown]
        top = max(range(10), key=percents.__getitem__)
        assert shown[top][0] == str(digit) and shown[top][2] and percents[top] > 50
        assert sum(percents) == pytest.approx(100, abs=1)
        # The page shows the server's answer to its canvas, pixel for pixel.
        _, answer = http_request(server, "POST", "/predict", canvas_png(browser))
        assert [f"{100 * p:.1f}%" for p in answer["probabilities"]] == [p for _, p, _ in shown]
        assert seen(browser) == answer["seen"] and sum(answer["seen"]) > 20 * 255
        browser.save_screenshot(str(tmp_path / f"drawn_{digit}.png"))
        browser.find_element("id", "clear").click()
        assert all(percent == "" and not top for _, percent, top in bars(browser))
        assert not any(seen(browser))


def test_a_row_drawn_in_the_browser_is_read_digit_by_digit(browser, server, tmp_path):
    browser.get(f"http://{server[0]}:{server[1]}/")
    browser.find_element("id", "row").click()  # the row mode: a wider canvas
    canvas = browser.find_element("id", "canvas")
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("1000", "300")
    assert canvas.size["width"] > 2 * canvas.size["height"]
    strokes, _ = row_strokes([1, 7, 0], random.Random(0), 120, [0.35, 0.35])
    draw_strokes(browser, strokes, 1000, 300)
    text = browser.find_element("id", "text").text
    # The page shows the server's answer to its canvas: the digits read, and each one's card.
    _, answer = http_request(server, "POST", "/row", canvas_png(browser))
    classes = [str(digit) for digit in range(10)]
    assert text == "".join("?" if digit["uncertain"] else classes[max(
        range(10), key=digit["probabilities"].__getitem__)] for digit in answer["digits"])
    assert text == "170"
    cards = browser.execute_script(
        "return [...document.querySelectorAll('#cards .card')].map(card => ["
        "card.querySelectorAll('.bar').length, card.querySelector('.top').textContent,"
        "[...card.querySelector('canvas').getContext('2d').getImageData(0, 0, 28, 28).data]"
        ".filter((_, i) => i % 4 === 0)])")
    assert [(bars, top) for bars, top, _ in cards] == [(10, "1"), (10, "7"), (10, "0")]
    assert [seen for _, _, seen in cards] == [digit["seen"] for digit in answer["digits"]]
    assert not browser.find_element("id", "bars").is_displayed()  # the single answer hidden
    browser.save_screenshot(str(tmp_path / "row.png"))
    browser.find_element("id", "clear").click()
    assert browser.find_element("id", "text").text == ""
    assert not browser.find_elements("css selector", "#cards .card")
    browser.find_element("id", "row").click()  # back to one digit
    assert canvas.get_attribute("width") == "400" and browser.find_element(
        "id", "bars").is_displayed()
