#!/usr/bin/env python3
"""Turns capture files (TESSERA_CAPTURE_DIR, see net/src/capture.rs) into fuzz
inputs for the `frontend`, `backend`, `stmt_execute` and `sql` targets.

Usage: fuzz/capture_to_corpus.py -o OUT_DIR [--max-len N] CAPTURE_DIR...

Writes OUT_DIR/<target>/<sha1 of the input>, ready for
`cargo fuzz cmin <target> corpus/<target> OUT_DIR/<target>`.

From each `<conn>.client` file (what a client sent), split into packets and
then into commands (a packet with sequence id 0 and the packets after it with
other ids, such as LOCAL INFILE data):
  frontend  0x00 + the handshake-phase packets (+ the first commands): phase 0,
            a fresh session (its nonce differs, so the login fails, but the
            real handshake responses and auth data are parsed);
            0x01 + one command: phase 1, a logged-in session;
            0x01 + consecutive commands, the connection's command stream cut
            into pieces of at most N bytes (pipelined commands);
            0x02 + one command: phase 2, sent while a result set streams.
  sql       the text of every COM_QUERY and COM_STMT_PREPARE, and the same
            with sysbench's `sbtestN` renamed to the target's sharded `stu`.
  stmt_execute  the COM_STMT_EXECUTE / SEND_LONG_DATA / RESET / FETCH / CLOSE
            payloads (statement id removed), one input per command, for each
            parameter count the execute payload is consistent with.
From each `<conn>.backend<id>` file (what a backend sent the session), split
into replies (a reply starts at sequence id 1):
  backend   selector + one reply: selector 1 (COM_STMT_PREPARE) for a prepare
            OK, else 0 (COM_QUERY).

Inputs repeating the shape of one already written (same command and SQL with
digits blanked, same packet lengths and first bytes) are skipped: a sysbench
capture holds thousands of the same statement with other numbers.
"""

import argparse
import hashlib
import os
import re
import sys


def packets(data):
    """(seq, payload, raw) of every whole packet; a torn tail is dropped."""
    out = []
    i = 0
    while i + 4 <= len(data):
        n = data[i] | data[i + 1] << 8 | data[i + 2] << 16
        if i + 4 + n > len(data):
            break
        out.append((data[i + 3], data[i + 4 : i + 4 + n], data[i : i + 4 + n]))
        i += 4 + n
    return out


def commands(pkts):
    """Splits client packets into (handshake packets, [command packet groups])."""
    hs = []
    cmds = []
    for p in pkts:
        if p[0] == 0:
            cmds.append([p])
        elif cmds:
            cmds[-1].append(p)
        else:
            hs.append(p)
    return hs, cmds


def replies(pkts):
    """Splits backend packets into replies: sequence id 1 after anything but 0
    (255 -> 0 -> 1 is a long reply wrapping around)."""
    out = []
    prev = None
    for p in pkts:
        if p[0] == 1 and prev != 0 or not out:
            out.append([p])
        else:
            out[-1].append(p)
        prev = p[0]
    return out


DIGITS = re.compile(rb"[0-9]+")
SBTEST = re.compile(rb"\bsbtest[0-9]+\b")


def command_shape(group):
    payload = group[0][1]
    if payload[:1] in (b"\x03", b"\x16"):
        return payload[:1] + DIGITS.sub(b"0", payload[1:]), len(group)
    return payload[:1], len(payload), len(group)


def raw(group):
    return b"".join(p[2] for p in group)


class Writer:
    def __init__(self, out, max_len):
        self.out = out
        self.max_len = max_len
        self.seen = set()
        self.count = {}

    def add(self, target, shape, data):
        if len(data) > self.max_len or (target, shape) in self.seen:
            return
        self.seen.add((target, shape))
        d = os.path.join(self.out, target)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
            f.write(data)
        self.count[target] = self.count.get(target, 0) + 1


# COM_STMT_EXECUTE, SEND_LONG_DATA, RESET, FETCH, CLOSE as the stmt_execute
# target numbers them.
STMT_KINDS = {0x17: 0, 0x18: 1, 0x1A: 2, 0x1C: 3, 0x19: 4}
TYPES = set(range(0x00, 0x14)) | set(range(0xF5, 0x100))


def execute_param_counts(body):
    """Parameter counts 0..11 an execute body (after the statement id) fits."""
    fits = []
    for n in range(12):
        if n == 0:
            if len(body) == 5:
                fits.append(0)
            continue
        at = 5 + (n + 7) // 8
        if len(body) <= at or body[at] not in (0, 1):
            continue
        if body[at] == 1:
            types = body[at + 1 : at + 1 + 2 * n]
            if len(types) < 2 * n:
                continue
            if any(t not in TYPES or f not in (0, 0x80) for t, f in zip(types[::2], types[1::2])):
                continue
        fits.append(n)
    return fits


def client_inputs(w, data):
    hs, cmds = commands(packets(data))
    if hs:
        head = raw(hs)
        tail = b""
        for g in cmds:
            if len(head) + len(tail) + len(raw(g)) > w.max_len - 1:
                break
            tail += raw(g)
        shape = tuple(len(p[1]) for p in hs), tuple(command_shape(g) for g in cmds[:4])
        w.add("frontend", ("hs", shape), b"\x00" + head + tail)
    for g in cmds:
        shape = command_shape(g)
        if g[0][1][:1] in (b"\x03", b"\x16"):
            sql = g[0][1][1:]
            w.add("sql", shape, sql)
            w.add("sql", ("stu", shape), SBTEST.sub(b"stu", sql))
        w.add("frontend", (1, shape), b"\x01" + raw(g))
        w.add("frontend", (2, shape), b"\x02" + raw(g))
        kind = STMT_KINDS.get(g[0][1][0]) if g[0][1] else None
        body = g[0][1][5:]
        if kind is not None and len(g) == 1 and 0xA5 not in body:
            counts = execute_param_counts(body) if kind == 0 else [1]
            for n in counts:
                w.add("stmt_execute", (n, shape), bytes([n, 0, kind]) + body)
    # The command stream in pieces of whole commands.
    piece, shapes = b"", []
    for g in cmds + [None]:
        r = raw(g) if g is not None else None
        if r is None or len(piece) + len(r) > w.max_len - 1:
            if len(shapes) > 1:
                w.add("frontend", ("stream", tuple(shapes)), b"\x01" + piece)
            piece, shapes = b"", []
            if r is None:
                break
        piece += r
        shapes.append(command_shape(g))


def backend_inputs(w, data):
    for reply in replies(packets(data)):
        first = reply[0][1]
        prepare_ok = len(first) == 12 and first[0] == 0 and reply[0][0] == 1
        selector = 1 if prepare_ok else 0
        body = b""
        for p in reply:
            if len(body) + len(p[2]) > w.max_len - 1:
                break
            body += p[2]
        shape = selector, tuple(len(p[1]) for p in reply[:64]), bytes(p[1][:1] and p[1][0] for p in reply[:64])
        w.add("backend", shape, bytes([selector]) + body)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("capture_dirs", nargs="+", metavar="CAPTURE_DIR")
    ap.add_argument("-o", "--out", required=True, metavar="OUT_DIR")
    ap.add_argument("--max-len", type=int, default=4096, help="largest input written (bytes)")
    a = ap.parse_args()
    w = Writer(a.out, a.max_len)
    files = [os.path.join(d, n) for d in a.capture_dirs for n in sorted(os.listdir(d))]
    for path in files:
        name = os.path.basename(path)
        with open(path, "rb") as f:
            data = f.read()
        ext = name.rsplit(".", 1)[-1]
        if ext == "client":
            client_inputs(w, data)
        elif ext.startswith("backend"):
            backend_inputs(w, data)
    for target, n in sorted(w.count.items()):
        print(f"{target}: {n} inputs in {os.path.join(a.out, target)}")
    if not w.count:
        print("no inputs: is the directory a capture?", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
