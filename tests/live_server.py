"""A reward server app on a real loopback port (uvicorn in a thread), for clients that speak HTTP themselves."""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time

import uvicorn
from conftest import answer_in_slot

# Each response's quality: the fake judge looks answers up by their exact text, so a server that judged the
# whole query (prompt, chat markers or end token included) would hit a KeyError, a failed judgement.
QUALITY = {
    "Red.": 1.0,
    "Dark blue.": 2.0,
    "It is green, like grass.": 3.0,
    "Yellow, the colour of the sun.": 4.0,
    "Two plus two is four.": 1.5,
    "Four.": 2.5,
    "It is 4, since 2 + 2 = 4.": 3.5,
    "4": 0.5,
}


def by_quality(prompt: str) -> dict[str, float]:
    """Pairwise verdict: A's share of 0.9 is its quality's share (ties at 0.1); unknown text raises."""
    a, b = QUALITY[answer_in_slot(prompt, "A")], QUALITY[answer_in_slot(prompt, "B")]
    return {"A": 0.9 * a / (a + b), "B": 0.9 * b / (a + b), "C": 0.1}


def points_by_quality(prompt: str) -> dict[str, float]:
    """Pointwise: mass on rating round(quality) + 1, the rest spread; unknown text raises."""
    text = prompt.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End of Assistant's Answer]")[0]
    top = min(5, int(QUALITY[text]) + 1)
    return {str(k): 0.6 if k == top else 0.1 for k in range(1, 6)}


@contextlib.contextmanager
def live(app):
    """Serve `app` on 127.0.0.1 (a free port) for the `with` block; yields the base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def finite(values) -> bool:
    return all(isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v) for v in values)
