#!/usr/bin/env python3
# Issue 22 experiment load (work in progress): a daemon-served reader and a passthrough
# reader streaming films (sha256 checked), find over lib/ in a loop, and an appender
# (content checked), for DURATION seconds; prints errors and the worst stall of each.
# Usage: restart-load.py MOUNTPOINT DURATION SOURCE_COPY_OF_film1.mkv
import os, sys, time, threading, hashlib, subprocess
mnt = sys.argv[1]; dur = float(sys.argv[2])
res = {}
stop = time.time() + dur
def reader(name, path, want):
    errs = 0; worst = 0.0; loops = 0
    while time.time() < stop:
        try:
            h = hashlib.sha256()
            with open(path, 'rb') as f:
                while True:
                    t = time.time(); b = f.read(1 << 20); dt = time.time() - t
                    worst = max(worst, dt)
                    if not b: break
                    h.update(b)
            if h.hexdigest() != want: errs += 1; print(name, "WRONG BYTES", flush=True)
            loops += 1
        except Exception as e:
            errs += 1; print(name, "error", e, flush=True); time.sleep(0.1)
    res[name] = (loops, errs, worst)
def finder():
    errs = 0; worst = 0.0; loops = 0
    while time.time() < stop:
        t = time.time()
        p = subprocess.run(["find", mnt + "/lib"], capture_output=True)
        worst = max(worst, time.time() - t)
        if p.returncode != 0 or p.stdout.count(b"\n") != 1 + 30 + 1500: errs += 1; print("find", p.returncode, p.stderr[:200], flush=True)
        loops += 1
    res["find"] = (loops, errs, worst)
def writer():
    errs = 0; worst = 0.0; n = 0
    path = mnt + "/append.log"
    with open(path, "ab") as f:
        while time.time() < stop:
            t = time.time()
            try:
                f.write(b"%08d\n" % n); f.flush(); os.fsync(f.fileno()); n += 1
            except Exception as e:
                errs += 1; print("writer error", e, flush=True); time.sleep(0.1)
            worst = max(worst, time.time() - t)
            time.sleep(0.005)
    data = open(path, "rb").read()
    if data != b"".join(b"%08d\n" % i for i in range(n)): errs += 1; print("append content wrong", flush=True)
    res["writer"] = (n, errs, worst)
want = hashlib.sha256(open(sys.argv[3], 'rb').read()).hexdigest()
ts = [threading.Thread(target=reader, args=("daemon-reader", mnt + "/film1.mkv", want)),
      threading.Thread(target=reader, args=("passthrough-reader", mnt + "/film2.mkv", want)),
      threading.Thread(target=finder), threading.Thread(target=writer)]
for t in ts: t.start()
for t in ts: t.join()
for k, v in res.items(): print(f"{k}: rounds {v[0]}, errors {v[1]}, worst stall {v[2]*1000:.1f} ms")
