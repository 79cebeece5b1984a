#!/usr/bin/env python3
"""Creates many queues on a running broker, one task each, through the raw protocol
(standard library only): `make-queues.py HOST:PORT COUNT [PREFIX]`. Publishes carry
1,000 tasks each (the default max_batch) and up to 8 are in flight. Used by
benches/many-queues.sh."""

import socket
import struct
import sys


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, payload):
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def request(req_id, op_number, op):
    body = varint(1 << 3) + varint(req_id) + field(op_number, op)
    return struct.pack(">I", len(body)) + body


def read_varint(data, at):
    n, shift = 0, 0
    while True:
        b = data[at]
        at += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, at


def result_tag(frame):
    """The tag of a ServerMessage's Response result (PublishOk = field 11)."""
    assert frame[0] == 0x0A, "a response"
    _, at = read_varint(frame, 1)
    assert frame[at] == 0x08, "the response id"
    _, at = read_varint(frame, at + 1)
    return frame[at]


def read_frame(sock, buf):
    while True:
        if len(buf) >= 4:
            (n,) = struct.unpack(">I", buf[:4])
            if len(buf) >= 4 + n:
                frame = bytes(buf[4 : 4 + n])
                del buf[: 4 + n]
                return frame
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise SystemExit("the broker closed the connection")
        buf.extend(chunk)


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    count = int(sys.argv[2])
    prefix = sys.argv[3] if len(sys.argv) > 3 else "idle"
    sock = socket.create_connection((host, int(port)))
    buf = bytearray()
    hello = varint(1 << 3) + varint(1) + field(2, b"make-queues")
    sock.sendall(request(1, 10, hello))
    read_frame(sock, buf)
    batch, window, req_id, sent, answered = 1000, 8, 1, 0, 0
    while answered * batch < count:
        while sent * batch < count and sent - answered < window:
            start = sent * batch
            tasks = b"".join(
                field(1, field(1, f"{prefix}-{i:07d}".encode()) + field(2, b"x"))
                for i in range(start, min(start + batch, count))
            )
            req_id += 1
            sock.sendall(request(req_id, 11, tasks))
            sent += 1
        frame = read_frame(sock, buf)
        if result_tag(frame) != (11 << 3 | 2):
            raise SystemExit(f"publish refused: {frame!r}")
        answered += 1
    print(f"{count} queues created", file=sys.stderr)


if __name__ == "__main__":
    main()
