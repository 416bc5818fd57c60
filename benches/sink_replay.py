"""Telemetry sink throughput (docs/benchmarks.md, "Telemetry sink").

N JSON readings from 100 devices are published into a topic (a never-pulled subscription keeps them), then a sink
subscription `perch-sink-replay` is made and seeked to the start, so the whole backlog reaches the sink at once;
reports rows/s until every row is committed, read from DATA_DIR/telemetry.sqlite.

Usage (a running `perch serve --dev --data-dir DATA_DIR`, Google's Python client from tests/compat/requirements.txt):
    python benches/sink_replay.py DATA_DIR N
"""
import datetime as dt, json, os, sqlite3, subprocess, sys, time
from google.cloud import pubsub_v1

data_dir, n = sys.argv[1], int(sys.argv[2])
ep = json.load(open(f"{data_dir}/endpoints.json"))
os.environ["PUBSUB_EMULATOR_HOST"] = ep["grpc"]
project = "bench"
pub = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1000, max_latency=0.05))
sub = pubsub_v1.SubscriberClient()
topic = pub.topic_path(project, "readings")
try:
    pub.create_topic(name=topic)
except Exception as e:
    print("create_topic:", type(e).__name__)
# A subscription that is never pulled keeps the backlog retained until the replay.
sub.create_subscription(name=sub.subscription_path(project, "hold"), topic=topic)
t0 = time.monotonic()
futures = [pub.publish(topic, json.dumps({"temperature_c": 20 + (i % 7) / 10, "humidity": 40 + i % 5}).encode(),
                       deviceId=f"pi-{i % 100}", subFolder="temperature") for i in range(n)]
for f in futures:
    f.result()
print(f"published {n} in {time.monotonic() - t0:.2f} s")
replay = sub.subscription_path(project, "perch-sink-replay")
sub.create_subscription(name=replay, topic=topic, ack_deadline_seconds=60)
time.sleep(1.5)  # the sink finds it
db = sqlite3.connect(f"file:{data_dir}/telemetry.sqlite?mode=ro", uri=True)
t0 = time.monotonic()
sub.seek(request={"subscription": replay, "time": dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)})
while True:
    count = db.execute("SELECT count(*) FROM telemetry WHERE subscription = ?", (replay,)).fetchone()[0]
    if count >= n:
        break
    time.sleep(0.05)
elapsed = time.monotonic() - t0
print(f"sink stored {count} rows in {elapsed:.2f} s = {count / elapsed:.0f} rows/s")
print("anomaly rows:", db.execute("SELECT count(*) FROM anomalies").fetchone()[0])
print("file size MiB:", round(os.path.getsize(f"{data_dir}/telemetry.sqlite") / 2**20, 1))
