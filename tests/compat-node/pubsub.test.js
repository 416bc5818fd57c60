// Perch Pub/Sub compatibility with Google's Node.js client (@google-cloud/pubsub), SPEC.md §7.9.
//
//   cd tests/compat-node && npm ci && PERCH_BIN=/abs/path/to/perch npm test
//
// PERCH_BIN may also be relative to the current directory or to the repository root. Without it the test is
// skipped (reason printed, exit 0). The test starts its own `perch serve --dev` on a fresh temp data dir with
// every listener on 127.0.0.1:0, waits for DATA/endpoints.json, points the client at the gRPC port through
// PUBSUB_EMULATOR_HOST (insecure channel, no credentials), and stops the server with SIGTERM at the end.
//
// What this client does differently from Python (the server must cope): `subscription.on('message')` opens
// `maxStreams` (default 5) StreamingPull streams on the same subscription at once, each first request
// {subscription, streamAckDeadlineSeconds, maxOutstandingMessages, maxOutstandingBytes} (no clientId), with a
// grpc-timeout deadline on the stream and `x-goog-request-params: subscription=…`; every 30 s it writes an empty
// request as keep-alive; acks and modacks are batched unary Acknowledge / ModifyAckDeadline calls.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const {spawn} = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const STARTUP_TIMEOUT_MS = Number(process.env.PERCH_STARTUP_TIMEOUT || 30) * 1000;
const SHUTDOWN_TIMEOUT_MS = Number(process.env.PERCH_SHUTDOWN_TIMEOUT || 15) * 1000;

function perchBinary() {
  const raw = (process.env.PERCH_BIN || '').trim();
  if (!raw) return null;
  for (const candidate of [path.resolve(raw), path.resolve(REPO_ROOT, raw)]) {
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // try the next location
    }
  }
  throw new Error(`PERCH_BIN=${raw} is not an executable file (looked in ${process.cwd()} and ${REPO_ROOT})`);
}

const PERCH_BIN = perchBinary();
const SKIP_REASON = PERCH_BIN
  ? false
  : 'PERCH_BIN is not set: this test needs a built `perch` binary (e.g. PERCH_BIN=$PWD/target/debug/perch)';
if (SKIP_REASON) console.log(`perch compat-node SKIPPED: ${SKIP_REASON}`);

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

async function startPerch() {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'perch-node-'));
  const logPath = path.join(dataDir, 'perch.log');
  const log = fs.openSync(logPath, 'a');
  const args = ['serve', '--data-dir', path.join(dataDir, 'data'),
    '--admin', '127.0.0.1:0', '--grpc', '127.0.0.1:0',
    '--mqtt', '127.0.0.1:0', '--device-http', '127.0.0.1:0', '--dev'];
  const child = spawn(PERCH_BIN, args, {stdio: ['ignore', log, log]});
  fs.closeSync(log);
  let exited = null;
  child.on('exit', (code, signal) => {
    exited = {code, signal};
  });
  const logTail = () => {
    try {
      return fs.readFileSync(logPath, 'utf8').split('\n').slice(-40).join('\n');
    } catch {
      return '(no log)';
    }
  };
  const endpointsPath = path.join(dataDir, 'data', 'endpoints.json');
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  for (;;) {
    if (exited) throw new Error(`perch serve exited early (${JSON.stringify(exited)})\n${logTail()}`);
    let endpoints = null;
    try {
      endpoints = JSON.parse(fs.readFileSync(endpointsPath, 'utf8'));
    } catch {
      // not written yet (the contract says it is written atomically)
    }
    if (endpoints && endpoints.grpc) {
      return {
        endpoints,
        logTail,
        async stop() {
          if (exited) return exited;
          const done = new Promise(resolve => child.once('exit', (code, signal) => resolve({code, signal})));
          child.kill('SIGTERM');
          let timer;
          const result = await Promise.race(
            [done, new Promise(resolve => (timer = setTimeout(resolve, SHUTDOWN_TIMEOUT_MS, null)))]);
          clearTimeout(timer);
          if (!result) {
            child.kill('SIGKILL');
            await done;
            throw new Error(`perch serve ignored SIGTERM for ${SHUTDOWN_TIMEOUT_MS} ms\n${logTail()}`);
          }
          fs.rmSync(dataDir, {recursive: true, force: true});
          return result;
        },
      };
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${endpointsPath} not written after ${STARTUP_TIMEOUT_MS} ms\n${logTail()}`);
    }
    await sleep(20);
  }
}

test('publish 10 messages and receive them all with a streaming subscriber', {skip: SKIP_REASON, timeout: 90000},
  async t => {
    const perch = await startPerch();
    t.after(async () => {
      const result = await perch.stop();
      assert.deepEqual(result, {code: 0, signal: null}, 'SIGTERM must exit 0');
    });

    process.env.PUBSUB_EMULATOR_HOST = perch.endpoints.grpc;
    // Even in emulator mode google-gax asks google-auth-library for the universe domain, which runs Application
    // Default Credentials discovery and probes the GCE metadata server (169.254.169.254). Turn that probe off:
    // the test must talk to 127.0.0.1 only.
    process.env.METADATA_SERVER_DETECTION = 'none';
    const {PubSub} = require('@google-cloud/pubsub');
    const projectId = `perch-node-${Date.now().toString(36)}`;
    const pubsub = new PubSub({projectId});
    t.after(() => pubsub.close());
    assert.equal(pubsub.isEmulator, true, 'PUBSUB_EMULATOR_HOST must put the client in emulator mode');

    const [topic] = await pubsub.createTopic('sensordata');
    assert.equal(topic.name, `projects/${projectId}/topics/sensordata`);
    const [subscription] = await topic.createSubscription('sensordata-sub', {ackDeadlineSeconds: 10});
    assert.equal(subscription.name, `projects/${projectId}/subscriptions/sensordata-sub`);
    const [metadata] = await subscription.getMetadata();
    assert.equal(metadata.topic, topic.name);
    await assert.rejects(pubsub.createTopic('sensordata'), err => err.code === 6, 'ALREADY_EXISTS (6)');

    const sent = new Map();
    for (let i = 0; i < 10; i++) {
      const data = Buffer.from(`node-${i}-\u00e9\u0000\u00ff`, 'latin1');
      const id = await topic.publishMessage({data, attributes: {seq: String(i), deviceId: 'thermo-1'}});
      assert.equal(typeof id, 'string');
      assert.ok(id.length > 0);
      sent.set(id, {data, seq: String(i)});
    }
    assert.equal(sent.size, 10, 'message ids must be unique');

    const deliveries = [];
    const received = new Map();
    const errors = [];
    const allReceived = new Promise((resolve, reject) => {
      subscription.on('error', err => {
        errors.push(err);
        reject(err);
      });
      subscription.on('message', message => {
        deliveries.push(message.id);
        received.set(message.id, message);
        message.ack();
        if ([...sent.keys()].every(id => received.has(id))) resolve();
      });
    });
    let timer;
    const timeout = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(
        `timed out: received ${received.size}/10 (${deliveries.length} deliveries)\n${perch.logTail()}`)), 30000);
    });
    try {
      await Promise.race([allReceived, timeout]);
    } finally {
      clearTimeout(timer);
    }
    await sleep(300); // let a duplicate (e.g. the same message on two of the client's streams) show up
    await subscription.close(); // flushes the pending acks
    assert.deepEqual(errors, []);

    for (const [id, {data, seq}] of sent) {
      const message = received.get(id);
      assert.ok(message, `message ${id} not received`);
      assert.deepEqual(message.data, data);
      assert.deepEqual(message.attributes, {seq, deviceId: 'thermo-1'});
      assert.ok(message.publishTime instanceof Date);
      assert.ok(Math.abs(message.publishTime.getTime() - Date.now()) < 60000, 'publishTime is now-ish');
    }
    assert.equal(deliveries.length, 10, `duplicate deliveries: ${deliveries}`);
  });
