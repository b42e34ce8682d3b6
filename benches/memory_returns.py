"""Does a node's memory come back after large flag sets and streams go away?

Starts `BINARY serve` on a 10-flag file (baseline RSS), then replaces the file six times with a
12,000-flag (~11 MB) set while 100 SyncFlags subscribers read every version (peak RSS), puts the
small file back, closes the subscribers, and reads the node's RSS 2 s and 10 s later and again
after 3 s of ordinary evaluations (`bunting bench`): an allocator that returns freed pages only
when a thread allocates again shows it there.

Run (the stock-client virtualenv has grpcio and flagd's generated stubs; `scripts/python-env`):
    target/pyenv/bin/python benches/memory_returns.py target/release/bunting /tmp/bunting-memory
Results: BENCHMARKS.md, "Memory comes back".
"""
import json, os, socket, subprocess, sys, time, threading, signal
import grpc
from openfeature.schemas.protobuf.flagd.sync.v1 import sync_pb2, sync_pb2_grpc

binary = sys.argv[1]
work = sys.argv[2]
os.makedirs(work, exist_ok=True)
flags = os.path.join(work, "flags.json")

def write_set(n, pad, tag):
    doc = {"flags": {f"f{i:05}-{tag}": {"state": "ENABLED", "variants": {"on": True, "off": False},
           "defaultVariant": "off", "metadata": {"pad": pad}} for i in range(n)}}
    tmp = flags + ".tmp"
    with open(tmp, "w") as f: json.dump(doc, f)
    os.replace(tmp, flags)

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
write_set(10, "x", "small")
conf = os.path.join(work, "node.toml")
grpc_port, metrics_port = free_port(), free_port()
target = f"127.0.0.1:{grpc_port}"
open(conf, "w").write(f'grpc_addr = "{target}"\nmetrics_addr = "127.0.0.1:{metrics_port}"\nhttp_addr = "127.0.0.1:0"\n[flags]\nsource = "file"\npath = "{flags}"\n')
node = subprocess.Popen([binary, "serve", "--config", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1.5)
base = rss(node.pid)
channel = grpc.insecure_channel(target)
stub = sync_pb2_grpc.FlagSyncServiceStub(channel)
# 12 MB set, 10 versions, 100 reading subscribers
streams = []
got = [0]
def reader(call):
    try:
        for _ in call: got[0] += 1
    except grpc.RpcError: pass
chans = [grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64<<20)]) for _ in range(100)]
for ch in chans:
    call = sync_pb2_grpc.FlagSyncServiceStub(ch).SyncFlags(sync_pb2.SyncFlagsRequest())
    t = threading.Thread(target=reader, args=(call,), daemon=True); t.start(); streams.append(call)
peak = 0
for v in range(6):
    write_set(12000, "p" * 800, f"v{v}")
    time.sleep(1.5)
    peak = max(peak, rss(node.pid))
write_set(10, "x", "small")
time.sleep(1.5)
for c in streams: c.cancel()
for ch in chans: ch.close()
time.sleep(2)
after2 = rss(node.pid)
time.sleep(8)
after10 = rss(node.pid)
subprocess.run([binary, "bench", "--target", target, "--flag", "f00000-small", "--seconds", "3", "--concurrency", "8", "--connections", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(1)
afterload = rss(node.pid)
print(f"{os.path.basename(binary)}: baseline {base:.0f} MB, peak {peak:.0f} MB, 2 s after {after2:.0f} MB, 10 s after {after10:.0f} MB, after 3 s of evaluations {afterload:.0f} MB (messages received {got[0]})")
node.send_signal(signal.SIGTERM); node.wait(timeout=20)
