"""Reads an offline W&B run back from disk (`run-*.wandb`), for tests: history rows and the final summary.

wandb >= 0.2x writes runs from its Go core; the Python reader of the file is gone, so this reads the format
directly: a 7-byte header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of records (4-byte CRC, 2-byte
length, 1-byte type: 1 full, 2 first, 3 middle, 4 last; zero padding at a block's end), each a protobuf `Record`.
"""

import json
import struct
import time
from pathlib import Path


def records(path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or kind == 0:  # padding up to the next block
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def read_run(wandb_dir, wait_s: float = 30.0) -> tuple[list[dict], dict]:
    """(history rows, summary) of the single offline run under `wandb_dir`; values JSON-decoded.

    wandb's core writes the file asynchronously, even after `wandb.finish()` returns: wait for its exit record.
    """
    (path,) = Path(wandb_dir).rglob("run-*.wandb")
    deadline = time.monotonic() + wait_s
    found = records(path)
    while not any(r.WhichOneof("record_type") == "exit" for r in found) and time.monotonic() < deadline:
        time.sleep(0.2)
        found = records(path)
    history, summary = [], {}
    for record in found:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
    return history, summary
